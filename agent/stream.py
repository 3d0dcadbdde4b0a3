"""What the user sees of the model's raw output while it streams.

The raw text carries markup (tool-call blocks, the stop token) that must not reach the screen, and a
marker can arrive split over several tokens (`<tool` ... `_call>`). So the tail of the raw text that
could still grow into a marker is held back until it either becomes one or cannot any more. With
`calls=False` (an answer to a request that offered no tools) tool-call markup is text like any other.
"""

from __future__ import annotations

from hybrid_agent.model.chat import ChatFormat


class VisibleText:
    def __init__(self, chat: ChatFormat, calls: bool = True) -> None:
        self._text = chat.visible_text if calls else chat.plain_text
        # Reasoning markers too, for formats that hide reasoning (model/chat_text.py).
        opener = (chat.tool_call_open,) if calls else ()
        self._markers = (*opener, *chat.stop_strings, *getattr(chat, "thinking_markers", ()))
        self.raw = ""
        self.emitted = ""

    def _held_back(self) -> int:
        """Length of the longest suffix of the raw text that is a proper prefix of a marker."""
        best = 0
        for marker in self._markers:
            for n in range(min(len(marker) - 1, len(self.raw)), best, -1):
                if self.raw.endswith(marker[:n]):
                    best = n
                    break
        return best

    def push(self, piece: str) -> str:
        """Add raw text; return the new visible text (maybe "")."""
        self.raw += piece
        held = self._held_back()
        visible = self._text(self.raw[: len(self.raw) - held] if held else self.raw)
        if not visible.startswith(self.emitted):  # cannot happen with well-formed markers; be safe
            return ""
        delta = visible[len(self.emitted) :]
        self.emitted = visible
        return delta

    def finish(self) -> str:
        """The rest, once the message is over (a held-back tail that never became a marker)."""
        visible = self._text(self.raw)
        delta = visible[len(self.emitted) :] if visible.startswith(self.emitted) else ""
        self.emitted += delta
        return delta
