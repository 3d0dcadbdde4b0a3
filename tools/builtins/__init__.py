"""The built-in tools. `BUILTIN_TOOLS` is what the registry loads, through the same code path as a
plugin's entry point (it is also published as the `builtin` entry point of this distribution)."""

from __future__ import annotations

from hybrid_agent.tools.builtins.command import RunCommand
from hybrid_agent.tools.builtins.files import EditFile, ReadFile, WriteFile
from hybrid_agent.tools.builtins.search import Glob, Grep, ListDir

BUILTIN_TOOLS = [ReadFile, WriteFile, EditFile, ListDir, Glob, Grep, RunCommand]

__all__ = ["BUILTIN_TOOLS", "EditFile", "Glob", "Grep", "ListDir", "ReadFile", "RunCommand", "WriteFile"]
