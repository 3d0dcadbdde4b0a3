"""The approval prompt: exactly what the tool will do, where it comes from, four answers on single keys.

y allow once · a allow always · n reject once · d reject always (deny) · r write a reason, then enter
to reject with it (the reason goes back to the model). Esc rejects once.
"""

from __future__ import annotations

import json
from typing import ClassVar

from hybrid_agent.agent.events import ApprovalDecision, ToolCallRequested
from hybrid_agent.tui.widgets.diff_view import DiffView
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.highlight import highlight
from textual.screen import ModalScreen
from textual.widgets import Input, Static


def describe_source(source: str) -> str:
    """'builtin' / 'plugin:<dist>' / 'mcp:<server>' as words a user reads."""
    kind, _, name = source.partition(":")
    if kind == "builtin":
        return "built-in tool"
    if kind == "plugin":
        return f"plugin {name}"
    if kind == "mcp":
        return f"MCP server {name}"
    return source


class ApprovalScreen(ModalScreen[ApprovalDecision]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True, False)", "allow once"),
        Binding("a", "answer(True, True)", "allow always"),
        Binding("n", "answer(False, False)", "reject once"),
        Binding("d", "answer(False, True)", "reject always"),
        Binding("r", "reason", "reject with a reason"),
        Binding("escape", "answer(False, False)", "reject once", show=False),
    ]

    def __init__(self, call: ToolCallRequested) -> None:
        super().__init__()
        self.call = call

    def compose(self) -> ComposeResult:
        call = self.call
        with Vertical(id="approval"):
            yield Static(
                f"Allow [b]{call.tool}[/b]? [dim]({describe_source(call.source)})[/dim]", id="approval-title"
            )
            with VerticalScroll(id="approval-body"):
                if call.command:
                    yield Static("command", classes="label")
                    yield Static(highlight(call.command, language="bash"), classes="command")
                if call.path:
                    yield Static("path", classes="label")
                    yield Static(call.path, classes="path", markup=False)
                if call.diff:
                    yield Static("change", classes="label")
                    yield DiffView(call.diff, call.path, classes="diff")
                if not (call.command or call.diff):
                    yield Static("arguments", classes="label")
                    yield Static(highlight(json.dumps(call.arguments, indent=2), language="json"))
            yield Input(placeholder="reason for rejecting (enter sends, esc goes back)", id="reason")
            yield Static(
                "[b]y[/b] allow once  [b]a[/b] allow always  [b]n[/b] reject once  "
                "[b]d[/b] reject always  [b]r[/b] reason",
                id="approval-keys",
            )

    def on_mount(self) -> None:
        self.query_one("#reason", Input).display = False

    def action_answer(self, allow: bool, always: bool) -> None:
        self.dismiss(ApprovalDecision(allow=allow, always=always))

    def action_reason(self) -> None:
        reason = self.query_one("#reason", Input)
        reason.display = True
        reason.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(ApprovalDecision(allow=False, reason=event.value.strip() or None))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While the reason is being typed, letters are text, not answers; esc leaves the field.
        reason = self.query_one("#reason", Input)
        if reason.has_focus and action in ("answer", "reason"):
            if action == "answer" and parameters == (False, False):
                reason.display = False
                self.set_focus(None)
            return False
        return True
