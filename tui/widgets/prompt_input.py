"""Multi-line input: enter sends, shift+enter / ctrl+j breaks the line, up/down walk the history,
tab completes a slash command or an `@path` (the matching commands or workspace paths are listed
under the input while typing; the paths are the workspace's files minus .gitignore'd ones, listed by
the app off the UI loop, agent/mentions.py)."""

from __future__ import annotations

from hybrid_agent.agent.mentions import complete_path, mention_at
from hybrid_agent.tui.slash import complete
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static, TextArea

MAX_SHOWN_PATHS = 8  # @ completions listed under the input


class PromptArea(TextArea):
    """The text area itself; history lives here because up/down must reach it before the cursor."""

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, compact=True, **kwargs)  # type: ignore[arg-type]
        self.sent: list[str] = []
        self.paths: list[str] = []  # the workspace's paths, for @ completion (set by the app)
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
        if event.key == "tab" and self.mention() is not None:
            event.stop()
            event.prevent_default()
            self.complete_mention()
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

    def mention(self) -> str | None:
        """What follows the `@` of the mention the cursor ends, or None when it ends none."""
        row, col = self.cursor_location
        found = mention_at(self.document.get_line(row), col)
        return None if found is None else found[1]

    def mention_matches(self) -> list[str]:
        prefix = self.mention()
        return [] if prefix is None else complete_path(self.paths, prefix)

    def complete_mention(self) -> None:
        """Complete the `@path` at the cursor to the longest prefix its matches share (a folder's
        `/` included, so tab again goes one level down)."""
        prefix, matches = self.mention(), self.mention_matches()
        if prefix is None or not matches:
            return
        common = matches[0]  # the longest prefix, character by character (names, not path parts)
        for match in matches[1:]:
            while not match.startswith(common):
                common = common[:-1]
        if len(common) > len(prefix):
            row, col = self.cursor_location
            self.replace(common[len(prefix) :], (row, col), (row, col))

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
        self._show_completions()

    def on_text_area_selection_changed(self, event: TextArea.SelectionChanged) -> None:
        self._show_completions()  # the cursor moved onto or off an @word

    def _show_completions(self) -> None:
        hint = self.query_one("#completions", Static)
        area = self.area
        matches = complete(area.text.strip()) if "\n" not in area.text else []
        lines = [f"{m.usage:<20} {m.help}" for m in matches]
        if not lines and (paths := area.mention_matches()):
            more = len(paths) - MAX_SHOWN_PATHS
            lines = ["@" + p for p in paths[:MAX_SHOWN_PATHS]] + ([f"… {more} more"] if more > 0 else [])
        hint.display = bool(lines)
        hint.update("\n".join(lines))
