"""Redraw a resumed session from its stored events.

`agent.history()` returns the session's events; they may be memory's stored events (kind in user /
assistant / tool_call / tool_result / system, with `content` and `data`) or the agent's own event
models. Both are read here, by field name, so the UI does not import memory/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hybrid_agent.agent.events import ToolCallRequested, ToolResultEvent
from hybrid_agent.tui.widgets.conversation import Conversation
from hybrid_agent.tui.widgets.tool_card import ToolCard


def _get(event: Any, name: str, default: Any = None) -> Any:
    return event.get(name, default) if isinstance(event, dict) else getattr(event, name, default)


async def redraw(conversation: Conversation, events: Iterable[Any], *, tail: int | None = None) -> None:
    """Replace the conversation with `events` (only the last `tail` of them when given: older ones
    would be pruned from the DOM straight away)."""
    await conversation.clear()
    items = list(events)
    if tail is not None and len(items) > tail:
        conversation.pruned = len(items) - tail
        items = items[-tail:]
    cards: dict[str, ToolCard] = {}
    for event in items:
        kind = _get(event, "kind")
        data = _get(event, "data") or {}
        text = _get(event, "content", None) or _get(event, "text", "") or ""
        if kind == "user":
            await conversation.add_user(text)
        elif kind in ("assistant", "text"):
            if text.strip():  # a round that was only a tool call has no visible text
                await conversation.add_assistant(text)
        elif kind == "tool_call":
            fields = {**data, **({} if isinstance(event, dict) else _model_fields(event))}
            fields.setdefault("call_id", str(len(cards)))
            fields.setdefault("tool", text or "tool")
            fields.setdefault("arguments", {})
            call = ToolCallRequested.model_validate(fields)
            cards[call.call_id] = await conversation.add_tool_call(call)
        elif kind == "tool_result":
            fields = {**data, **({} if isinstance(event, dict) else _model_fields(event))}
            call_id = str(fields.get("call_id", ""))
            card = cards.get(call_id) or (list(cards.values())[-1] if cards else None)
            if card is not None:
                card.set_result(
                    ToolResultEvent(
                        call_id=card.call.call_id,
                        tool=card.call.tool,
                        text=text,
                        is_error=bool(fields.get("is_error", False)),
                        denied=bool(fields.get("denied", False)),
                    )
                )
        # "system" events (and anything unknown) are bookkeeping, not conversation.


def _model_fields(event: Any) -> dict[str, Any]:
    dump = getattr(event, "model_dump", None)
    return {k: v for k, v in dump().items() if v is not None} if dump else {}
