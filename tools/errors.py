"""Exception types of the tool layer.

Inside a tool call these never reach the agent as exceptions: the registry turns them into
`ToolResult(is_error=True)` so the model can read the message and correct itself. They are raised
directly only where a *programmer* (or the user's configuration) made the mistake: a tool defined
wrongly, a plugin name taken twice, an MCP server that does not start.
"""

from __future__ import annotations


class ToolError(Exception):
    """Base class; the message is written for whoever reads it (the model or the user)."""


class WorkspaceError(ToolError):
    """A path was refused: outside the workspace, protected, not a regular file, ..."""


class ToolDefinitionError(ToolError):
    """A tool cannot be built from what was given (no type hints, a duplicate name, ...)."""


class ArgumentsError(ToolError):
    """Arguments of a tool call do not fit its schema (for tools not validated by a pydantic model)."""


class UndoError(ToolError):
    """An undo was refused; nothing was changed."""


class MCPServerError(ToolError):
    """An MCP server could not be started, or stopped answering."""
