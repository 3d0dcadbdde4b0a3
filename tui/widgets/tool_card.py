"""A tool call as a card: tool, arguments, status; the result collapsed; an edit's diff in the open."""

from __future__ import annotations

import json
from typing import Literal

from hybrid_agent.agent.events import ToolCallRequested, ToolResultEvent
from hybrid_agent.tui.widgets.diff_view import DiffView
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.highlight import highlight
from textual.widgets import Collapsible, Static

ToolStatus = Literal["requested", "waiting", "running", "done", "error", "denied"]

_STATUS_LABEL: dict[str, str] = {
    "requested": "…",
    "waiting": "waiting for approval",
    "running": "running",
    "done": "done",
    "error": "failed",
    "denied": "denied",
}
_RESULT_PREVIEW_LINES = 200  # a 10k-line file read would make the card itself the slow part


def _summary(call: ToolCallRequested) -> str:
    """One line that says what the call does: the command or path when there is one."""
    if call.command:
        return call.command
    if call.path:
        return call.path
    args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
    return args if len(args) <= 60 else args[:57] + "..."


class ToolCard(Vertical):
    """Shows one ToolCallRequested and, when it comes, its ToolResultEvent."""

    def __init__(self, call: ToolCallRequested) -> None:
        super().__init__()
        self.call = call
        self.status: ToolStatus = "requested"
        self.result: ToolResultEvent | None = None
        self._args = Static(highlight(json.dumps(call.arguments, indent=2), language="json"), classes="args")
        self._result = Static("", classes="result", markup=False)
        self._collapsible = Collapsible(self._args, self._result, title=self._title(), collapsed=True)

    def _title(self) -> str:
        source = "" if self.call.source == "builtin" else f" [{self.call.source}]"
        return f"{self.call.tool}{source}  {_summary(self.call)}  · {_STATUS_LABEL[self.status]}"

    def compose(self) -> ComposeResult:
        yield self._collapsible
        if self.call.diff:
            yield DiffView(self.call.diff, self.call.path, classes="diff")

    def set_status(self, status: ToolStatus) -> None:
        self.status = status
        self.set_class(status in ("error", "denied"), "failed")
        self._collapsible.title = self._title()

    def set_result(self, result: ToolResultEvent) -> None:
        self.result = result
        lines = result.text.splitlines()
        shown = "\n".join(lines[:_RESULT_PREVIEW_LINES])
        if len(lines) > _RESULT_PREVIEW_LINES:
            shown += f"\n… {len(lines) - _RESULT_PREVIEW_LINES} more lines"
        self._result.update(shown)
        self.set_status("denied" if result.denied else "error" if result.is_error else "done")
