"""hybrid_agent: a runtime for long-running coding agents on hybrid (attention + recurrent) models.

The one import name of the distribution. Its subpackages live in the repository's top-level folders
(`hybrid_agent.model` is `model/`, `hybrid_agent.agent` is `agent/`, and so on: see pyproject.toml's
package-dir), so no generic name such as `kernels` or `model` is ever installed at the top level.

The public names below load lazily: `import hybrid_agent` (and `hybrid-agent --version`) does not
import torch.

    from hybrid_agent import Agent, Store, load_model, tool
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid_agent.agent import Agent
    from hybrid_agent.memory import Store
    from hybrid_agent.model import HybridConfig, HybridLM, ModelState, load_model
    from hybrid_agent.tools import Tool, ToolContext, ToolRegistry, ToolResult, tool

# Each public name and the subpackage that defines it.
_PUBLIC = {
    "Agent": "hybrid_agent.agent",
    "Store": "hybrid_agent.memory",
    "HybridConfig": "hybrid_agent.model",
    "HybridLM": "hybrid_agent.model",
    "ModelState": "hybrid_agent.model",
    "load_model": "hybrid_agent.model",
    "Tool": "hybrid_agent.tools",
    "ToolContext": "hybrid_agent.tools",
    "ToolRegistry": "hybrid_agent.tools",
    "ToolResult": "hybrid_agent.tools",
    "tool": "hybrid_agent.tools",
}

__all__ = [
    "Agent",
    "HybridConfig",
    "HybridLM",
    "ModelState",
    "Store",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "__version__",
    "load_model",
    "tool",
]

try:
    __version__ = metadata.version("hybrid-agent")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    where = _PUBLIC.get(name)
    if where is None:
        raise AttributeError(f"module 'hybrid_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
