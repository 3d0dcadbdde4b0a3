"""tools/ — the tool layer: typed tools, a registry with plugins and MCP servers, a confined
workspace, approvals and an undo journal. See docs/interfaces.md and docs/design.md."""

from hybrid_agent.tools.base import Limits, Policy, Preview, Tool, ToolContext, ToolResult, tool
from hybrid_agent.tools.errors import (
    ArgumentsError,
    MCPServerError,
    ToolDefinitionError,
    ToolError,
    UndoError,
    WorkspaceError,
)
from hybrid_agent.tools.journal import (
    Journal,
    JournalEntry,
    MemoryJournal,
    WriteAheadJournal,
    reconcile,
    undo_after_turn,
    undo_last,
)
from hybrid_agent.tools.registry import ENTRY_POINT_GROUP, ToolRegistry
from hybrid_agent.tools.sandbox import SANDBOX_MODES, SandboxPolicy, SandboxUnavailable
from hybrid_agent.tools.workspace import Workspace

__all__ = [
    "ENTRY_POINT_GROUP",
    "SANDBOX_MODES",
    "ArgumentsError",
    "Journal",
    "JournalEntry",
    "Limits",
    "MCPServerError",
    "MemoryJournal",
    "Policy",
    "Preview",
    "SandboxPolicy",
    "SandboxUnavailable",
    "Tool",
    "ToolContext",
    "ToolDefinitionError",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "UndoError",
    "Workspace",
    "WorkspaceError",
    "WriteAheadJournal",
    "reconcile",
    "tool",
    "undo_after_turn",
    "undo_last",
]
