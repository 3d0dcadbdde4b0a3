"""What a turn stores as events, and how a session's conversation is rebuilt from them on resume.

Stored kinds (memory.EVENT_KINDS): `system` (the system prompt and the tool schemas the session was
started with: a chat template must see the same ones on every later segment), `user`, `assistant`
(visible text; `data.raw` is the exact decoded text, markup included, that the state holds),
`tool_call` and `tool_result` (`data` carries the fields of the matching agent event, so the TUI can
redraw them). A hook's run is a `system` event with `data.hook` (agent/hooks.py), an approval mode
change one with `data.mode` and a plan-mode turn's plan one with `data.plan` (agent/plan.py): notes, not
part of the conversation. Context that hooks (or plan mode) added to a message, and the files its
`@path` words attached, is the `user` event's `data.context` (`data.mentions` lists those files);
`data.plan_mode` marks a message sent in plan mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid_agent.agent.events import ToolCallRequested, ToolResultEvent
from hybrid_agent.memory import Event
from hybrid_agent.model.chat import ChatFormat, ChatMessage, Segment

NOTE_KEYS = ("hook", "mode", "plan")  # a `system` event with one of these in `data` is a note


def system_event(
    system: str, tools: Sequence[dict[str, Any]], format_name: str, memory: dict[str, Any] | None = None
) -> Event:
    """The session's start; `memory` records the AGENTS.md files its prompt holds
    (agent/project_memory.py)."""
    data: dict[str, Any] = {"tools": list(tools), "format": format_name}
    if memory is not None:
        data["project_memory"] = memory
    return Event("system", system, data)


def user_event(
    text: str,
    context: str = "",
    mentions: list[dict[str, Any]] | None = None,
    memory: dict[str, Any] | None = None,
    *,
    plan_mode: bool = False,
) -> Event:
    """The user's message; `context` holds what hooks (or plan mode) added and the files its `@path`
    words attached (agent/mentions.py), which `mentions` lists (path, size, truncated); `memory`, on the
    message of a `/memory reload`, records the AGENTS.md files it gave the model."""
    data: dict[str, Any] = {}
    if memory is not None:
        data["project_memory"] = memory
    if context:
        data["context"] = context
    if mentions:
        data["mentions"] = mentions
    if plan_mode:
        data["plan_mode"] = True
    return Event("user", text, data or None)


def user_message(text: str, context: str = "") -> ChatMessage:
    """The user's message as the model reads it: the context hooks added (agent/hooks.py) first."""
    return ChatMessage("user", f"{context}\n\n{text}" if context else text)


def assistant_event(visible: str, raw: str, stop: str) -> Event:
    return Event("assistant", visible, {"raw": raw, "stop": stop})


def tool_call_event(call: ToolCallRequested, raw: str, error: str | None) -> Event:
    data = call.model_dump(exclude={"kind"})
    data.update(raw=raw, error=error)
    return Event("tool_call", call.tool, data)


def tool_result_event(result: ToolResultEvent, tool_call_id: str | None = None) -> Event:
    """`tool_call_id`: the id the chat template shows the result under (the model's own call id where
    its syntax has one), when it is not `result.call_id`."""
    data = result.model_dump(exclude={"kind", "text"})
    if tool_call_id is not None and tool_call_id != result.call_id:
        data["tool_call_id"] = tool_call_id
    return Event("tool_result", result.text, data)


@dataclass
class Conversation:
    """What the chat format needs to render the next segment of a session."""

    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    plan_mode: bool = False  # the last message was sent in plan mode


def conversation_of(events: Iterable[Event]) -> Conversation:
    conv = Conversation()
    for ev in events:
        data = ev.data or {}
        if ev.kind == "system" and any(k in data for k in NOTE_KEYS):
            continue
        if ev.kind == "system":
            conv.system = ev.content
            conv.tools = list(data.get("tools", []))
        elif ev.kind == "user":
            conv.messages.append(user_message(ev.content, data.get("context", "")))
            conv.plan_mode = bool(data.get("plan_mode"))
        elif ev.kind == "assistant":
            conv.messages.append(ChatMessage("assistant", ev.content, raw=data.get("raw", ev.content)))
        elif ev.kind == "tool_result":
            answers = data.get("tool_call_id", data.get("call_id"))
            tool = data.get("tool")  # "?" stands for a call whose name could not be read (agent/toolcalls.py)
            name = None if tool == "?" else tool
            conv.messages.append(ChatMessage("tool", ev.content, name=name, tool_call_id=answers))
    return conv


def rebuild_segments(
    chat: ChatFormat, messages: Sequence[ChatMessage], system: str, tools: Sequence[dict[str, Any]]
) -> list[Segment]:
    """What to prefill onto an empty state so that it holds `messages` (an imported conversation,
    agent/transfer.py), as the turns would have left it: each run of user/tool messages as the chat
    format renders it after the ones before, each assistant message as the text the model wrote."""
    parts: list[Segment] = []
    done: list[ChatMessage] = []
    pending: list[ChatMessage] = []
    for msg in messages:
        if msg.role != "assistant":
            pending.append(msg)
            continue
        if pending:
            parts.append(chat.segment(done, pending, system=system, tools=tools))
            done += pending
            pending = []
        parts.append(Segment(((msg.raw if msg.raw is not None else msg.content, False),)))
        done.append(msg)
    if pending:
        parts.append(chat.segment(done, pending, system=system, tools=tools))
    return parts
