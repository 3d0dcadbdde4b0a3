"""The messages of a conversation: what the user said, what the assistant streams, notices."""

from __future__ import annotations

from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream


class UserMessage(Static):
    """What the user typed, verbatim (not Markdown: it is shown exactly as it was sent)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text


class AssistantMessage(Markdown):
    """One stretch of assistant text, streamed as Markdown.

    Writes go through Textual's MarkdownStream, which joins the fragments that arrive while the
    previous render is still running: at hundreds of tokens/s the widget re-parses once per frame,
    not once per token.
    """

    def __init__(self, text: str = "") -> None:
        super().__init__(text)
        self.text = text
        self._stream: MarkdownStream | None = None

    async def append_text(self, fragment: str) -> None:
        if not fragment:
            return
        self.text += fragment
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        await self._stream.write(fragment)

    async def finish(self) -> None:
        """Flush what is still queued; after this the message is static."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None


class Notice(Static):
    """A line from the app itself (session resumed, command output, an error), not from the model."""

    def __init__(self, text: str, *, error: bool = False, classes: str | None = None) -> None:
        super().__init__(text, markup=False, classes=classes)
        self.text = text
        if error:
            self.add_class("error")
