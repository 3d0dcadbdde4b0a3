"""`python -m hybrid_agent` is the `hybrid-agent` command."""

from hybrid_agent.cli import main

raise SystemExit(main())
