"""The scrolling conversation, kept light for sessions that run for days.

Only the last `max_widgets` message widgets live in the DOM; older ones are removed (their events
stay in the session database, and a resumed session redraws only its tail). Layout and render cost
therefore stay flat however long the session gets.
"""

from __future__ import annotations

from hybrid_agent.agent.events import ToolCallRequested
from hybrid_agent.tui.widgets.messages import AssistantMessage, Notice, UserMessage
from hybrid_agent.tui.widgets.tool_card import ToolCard
from textual.containers import VerticalScroll
from textual.widget import Widget

DEFAULT_MAX_WIDGETS = 300


class Conversation(VerticalScroll):
    """User messages, streamed assistant messages, tool cards and notices, newest at the bottom."""

    def __init__(self, *, max_widgets: int = DEFAULT_MAX_WIDGETS, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_widgets = max_widgets
        self.pruned = 0  # how many widgets have left the DOM; shown in the 'earlier' marker
        self._marker = Notice("", classes="pruned")
        self._marker.display = False

    def on_mount(self) -> None:
        self.mount(self._marker)
        self.anchor()

    async def add(self, widget: Widget) -> Widget:
        await self.mount(widget)
        await self._prune()
        return widget

    async def add_user(self, text: str) -> UserMessage:
        msg = UserMessage(text)
        await self.add(msg)
        self.anchor()  # the user just spoke: follow the answer even if they had scrolled up
        return msg

    async def add_assistant(self, text: str = "") -> AssistantMessage:
        msg = AssistantMessage(text)
        await self.add(msg)
        return msg

    async def add_tool_call(self, call: ToolCallRequested) -> ToolCard:
        card = ToolCard(call)
        await self.add(card)
        return card

    async def add_notice(self, text: str, *, error: bool = False) -> Notice:
        notice = Notice(text, error=error)
        await self.add(notice)
        return notice

    def messages(self) -> list[Widget]:
        return [w for w in self.children if w is not self._marker]

    async def clear(self) -> None:
        await self.remove_children([w for w in self.children if w is not self._marker])
        self.pruned = 0
        self._marker.display = False

    async def _prune(self) -> None:
        items = self.messages()
        excess = len(items) - self.max_widgets
        if excess <= 0:
            return
        # Never prune a message that is still streaming: its stream holds a reference to it.
        old = [w for w in items[:excess] if not (isinstance(w, AssistantMessage) and w._stream)]
        await self.remove_children(old)
        self.pruned += len(old)
        self._marker.update(f"… {self.pruned} earlier messages are in the session database")
        self._marker.display = True
