"""The help screen: key bindings of the app, the approval prompt and the browser, and the slash
commands, all read from where they are defined so the list cannot go stale."""

from __future__ import annotations

from typing import ClassVar

from hybrid_agent.tui.screens.approval import ApprovalScreen
from hybrid_agent.tui.screens.sessions import SessionBrowser
from hybrid_agent.tui.slash import SLASH_COMMANDS
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static


def _keys(bindings: list[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for b in bindings:
        if isinstance(b, Binding) and b.description:
            rows.append((b.key.replace(",", " / "), b.description))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,f1", "dismiss", "close")]

    def __init__(self, app_bindings: list[BindingType]) -> None:
        super().__init__()
        self.app_bindings = app_bindings

    def compose(self) -> ComposeResult:
        sections = [
            ("Keys", _keys(self.app_bindings)),
            (
                "Input",
                [
                    ("enter", "send"),
                    ("shift+enter / ctrl+j", "new line"),
                    ("up / down", "history"),
                    ("tab", "complete a /command or an @path"),
                ],
            ),
            ("Slash commands", [(c.usage, c.help) for c in SLASH_COMMANDS]),
            ("Approval prompt", _keys(ApprovalScreen.BINDINGS)),
            ("Session browser", _keys(SessionBrowser.BINDINGS)),
        ]
        # Content, not markup: usages like "/resume [ID]" must not be read as markup tags.
        lines: list[Content] = []
        for title, rows in sections:
            lines.append(Content.styled(title, "bold"))
            lines.extend(Content.assemble("  ", (f"{k:<22}", "$text-accent"), " ", d) for k, d in rows)
            lines.append(Content(""))
        with VerticalScroll(id="help"):
            yield Static(Content("\n").join(lines[:-1]))
            yield Static("[dim]esc closes[/dim]", id="help-close")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
