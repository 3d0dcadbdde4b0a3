"""Multi-line input: enter sends, shift+enter / ctrl+j breaks the line, up/down walk the history,
tab completes a slash command (the matching commands are listed under the input while typing)."""

from __future__ import annotations

from hybrid_agent.tui.slash import complete
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static, TextArea


class PromptArea(TextArea):
    """The text area itself; history lives here because up/down must reach it before the cursor."""

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, compact=True, **kwargs)  # type: ignore[arg-type]
        self.sent: list[str] = []
        self._history_pos: int | None = None  # index into history while browsing it
        self._draft = ""  # what was typed before browsing started, restored past the newest entry

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self._submit()
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if event.key == "tab" and self.text.startswith("/"):
            event.stop()
            event.prevent_default()
            self.complete_command()
            return
        await super()._on_key(event)

    def _submit(self) -> None:
        text = self.text.strip()
        if not text:
            return
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._history_pos = None
        self._draft = ""
        self.clear()
        self.post_message(self.Submitted(text))

    def complete_command(self) -> None:
        matches = complete(self.text.strip())
        if not matches:
            return
        names = ["/" + m.name for m in matches]
        # Complete to the longest common prefix; a single match also gets its trailing space.
        prefix = names[0]
        for n in names[1:]:
            while not n.startswith(prefix):
                prefix = prefix[:-1]
        self.load_text(prefix + (" " if len(names) == 1 else ""))
        self.move_cursor(self.document.end)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0 and self.sent:
            self._browse(-1)
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if not select and self.cursor_location[0] == last_row and self._history_pos is not None:
            self._browse(+1)
            return
        super().action_cursor_down(select)

    def _browse(self, step: int) -> None:
        if self._history_pos is None:
            if step > 0:
                return
            self._draft = self.text
            pos = len(self.sent) - 1
        else:
            pos = self._history_pos + step
        if pos < 0:
            return
        if pos >= len(self.sent):
            self._history_pos = None
            self.load_text(self._draft)
        else:
            self._history_pos = pos
            self.load_text(self.sent[pos])
        self.move_cursor(self.document.end)


class PromptInput(Vertical):
    """The prompt area with the list of slash commands matching what is typed."""

    def compose(self) -> ComposeResult:
        yield PromptArea(id="prompt-area", placeholder="Message  (enter sends, / for commands, f1 help)")
        yield Static("", id="completions", markup=False)

    @property
    def area(self) -> PromptArea:
        return self.query_one(PromptArea)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        hint = self.query_one("#completions", Static)
        matches = complete(event.text_area.text.strip()) if "\n" not in event.text_area.text else []
        hint.display = bool(matches)
        hint.update("\n".join(f"{m.usage:<20} {m.help}" for m in matches))
