"""The `hybrid-agent` command (pyproject.toml's [project.scripts], and `python -m hybrid_agent`).

The top of the package: the one module that imports both agent/ and tui/. It parses with agent/cli.py,
runs the commands (`run`, `sessions`, `config`, `trust`, `mcp`, `pull`) through agent/commands.py, and
without a command opens the terminal UI (tui/app.py) itself, once agent/commands.py has checked its
options.
Everything past the parser is imported when it runs, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hybrid_agent.agent.cli import EXIT_USAGE, parse_args
from hybrid_agent.agent.startup import mark

NO_TERMINAL = (
    "hybrid-agent: the terminal UI needs a terminal on stdin and stdout; "
    'without one, use `hybrid-agent run "PROMPT"`'
)


def main(argv: list[str] | None = None) -> int:
    mark("main")  # the interpreter is up and the parser imported (a trace of the start: agent/startup.py)
    args = parse_args(argv)
    if args.command is None and not (sys.stdin.isatty() and sys.stdout.isatty()):
        # The UI would wait on a terminal that is not there (a pipe, a CI job, an editor's task).
        print(NO_TERMINAL, file=sys.stderr)
        return EXIT_USAGE
    from hybrid_agent.agent.commands import dispatch, run_command

    if args.command is None:
        return run_command(run_tui, args)
    return dispatch(args)


def run_tui(args: argparse.Namespace) -> int:
    """Open the terminal UI with the options of `args`, once they passed agent/commands.py's checks."""
    from hybrid_agent.agent.commands import tui_options
    from hybrid_agent.agent.config_commands import trust_question
    from hybrid_agent.agent.errors import AgentError
    from hybrid_agent.agent.factory import ModelPreload, preloading
    from hybrid_agent.agent.session_ids import PICK_SESSION

    options = tui_options(args)
    # The weights are read on a thread from here (agent/factory.py `preloading`), while the UI's
    # modules are imported and the app starts; the agent the UI opens takes the model, else it is
    # stopped at the end: no thread outlives the UI.
    with preloading(
        lambda: (
            ModelPreload(options["model"], options["device"], options["seed"]) if options["tp"] == 1 else None
        ),
        to_the_end=True,
    ) as preload:
        try:
            from hybrid_agent.tui.app import run_app
        except ImportError as exc:
            raise AgentError(
                f"the terminal UI is not available ({exc}); use `hybrid-agent run PROMPT`"
            ) from exc
        extra: dict[str, Any] = {}
        if args.resume == PICK_SESSION:  # `--resume` without an id: the session picker over a new session
            extra["pick_session"] = True
        # In a folder whose settings need trust, the UI asks first (tui/screens/trust.py).
        if (question := trust_question(args, tui_options)) is not None:
            extra["trust"] = question
        return int(run_app(options, preload=preload, **extra) or 0)
