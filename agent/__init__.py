"""agent/: the persistent agent loop and the command line.

`from hybrid_agent import Agent` (or `from hybrid_agent.agent import Agent`). The import is lazy so that
`hybrid-agent --help` starts without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid_agent.agent.loop import Agent

__all__ = ["Agent"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from hybrid_agent.agent.loop import Agent

        return Agent
    raise AttributeError(f"module 'hybrid_agent.agent' has no attribute {name!r}")
