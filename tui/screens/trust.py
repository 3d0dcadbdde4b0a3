"""The question "Trust this folder?", asked before the agent starts in a folder whose project or
local settings files would add hooks, MCP servers, allow rules or sandbox relaxations
(agent/settings.py). Yes records the trust as `hybrid-agent trust` does and applies them; No ignores
them for this session."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class TrustScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "trust the folder"),
        Binding("n,escape", "answer(False)", "not this time"),
    ]

    def __init__(self, question: Any) -> None:
        """`question`: agent/config_commands.py's TrustQuestion (folder, files with what they enable)."""
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="trust"):
            yield Static("[b]Trust this folder?[/b]", id="trust-title")
            yield Static(str(self.question.folder), classes="path", markup=False)
            with VerticalScroll(id="trust-body"):
                for path, items in self.question.files:
                    yield Static(f"{path.name} would:", classes="label", markup=False)
                    for item in items:
                        yield Static(f"  • {item}", markup=False)
            yield Static(
                "They come with the folder (code you may have cloned): trust it only if you trust its "
                "authors. No: they are ignored for this session; deny and ask rules apply either way.",
                id="trust-note",
            )
            with Horizontal(id="trust-buttons"):
                yield Button(
                    "Yes, trust it (y)", id="trust-yes", variant="warning", action="screen.answer(True)"
                )
                yield Button("No (n)", id="trust-no", action="screen.answer(False)")

    def on_mount(self) -> None:
        self.query_one("#trust-no", Button).focus()  # enter on the safe answer

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
