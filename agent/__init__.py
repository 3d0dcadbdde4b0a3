"""agent/: the persistent agent loop and the command line.

`from agent import Agent`. The import is lazy so that `hybrid-agent --help` starts without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.loop import Agent

__all__ = ["Agent"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from agent.loop import Agent

        return Agent
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
