"""A stand-in for agent.Agent, used only until the real Agent lands (then tests switch to it).

It follows the documented interface (docs/interfaces.md, "agent/"): send() yields agent events,
approval goes through the callback, sessions live in memory.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.events import (
    AgentEvent,
    ApprovalDecision,
    TextDelta,
    ToolCallRequested,
    ToolResultEvent,
    TurnEnd,
)


@dataclass
class FakeSession:
    id: str
    title: str
    workspace: str
    events: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    tokens: int = 0
    updated_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)


class FakeAgent:
    def __init__(self, script: Callable[[str], list[Any]], approval: Any = None, delay: float = 0.0) -> None:
        self.script = script
        self.approval: Callable[[ToolCallRequested], Awaitable[ApprovalDecision]] | None = approval
        self.delay = delay
        self.mode = "ask"
        self.model_name = "tiny-hybrid"
        self.device = "cpu"
        self.window = 512
        self._ids = (f"sess{i:04d}" for i in itertools.count())
        self._sessions: dict[str, FakeSession] = {}
        self._cancel = False
        self.new_session()

    # -- state --
    @property
    def session(self) -> FakeSession:
        return self._sessions[self.session_id]

    @property
    def turn(self) -> int:
        return self.session.turns

    @property
    def state_tokens(self) -> int:
        return self.session.tokens

    @property
    def state_bytes(self) -> int:
        return 1_000_000 + 10 * self.session.tokens

    def new_session(self) -> None:
        sid = next(self._ids)
        self._sessions[sid] = FakeSession(sid, "", "/work/project")
        self.session_id = sid

    def cancel(self) -> None:
        self._cancel = True

    async def send(self, text: str) -> AsyncIterator[AgentEvent]:
        self._cancel = False
        s = self.session
        events = [{"kind": "user", "content": text}]
        n = 0
        for step in self.script(text):
            if self._cancel:
                yield self._end("cancelled", n)
                return
            if isinstance(step, str):
                if self.delay:
                    await asyncio.sleep(self.delay)
                n += 1
                events.append({"kind": "assistant", "content": step})
                yield TextDelta(text=step)
            else:
                call: ToolCallRequested = step
                yield call
                allow = True
                if call.needs_approval and self.mode == "ask":
                    decision = await self.approval(call) if self.approval else ApprovalDecision(allow=False)
                    allow = decision.allow
                if self._cancel:
                    yield self._end("cancelled", n)
                    return
                result = ToolResultEvent(
                    call_id=call.call_id, tool=call.tool, text="ok" if allow else "denied", denied=not allow
                )
                events += [
                    {"kind": "tool_call", "content": call.tool, "data": call.model_dump()},
                    {"kind": "tool_result", "content": result.text, "data": result.model_dump()},
                ]
                yield result
        s.turns += 1
        if s.turns == 1 and not s.title:
            s.title = text[:60]
        s.tokens += len(text) + n
        s.events += [{**e, "turn": s.turns} for e in events]
        yield self._end("end_of_turn", n)

    def _end(self, reason: Any, n: int) -> TurnEnd:
        s = self.session
        return TurnEnd(
            session_id=s.id,
            turn=s.turns,
            prompt_tokens=1,
            completion_tokens=n,
            state_tokens=s.tokens,
            state_bytes=self.state_bytes,
            window=self.window,
            tokens_per_s=42.0,
            saved=reason != "cancelled",
            stop_reason=reason,
        )

    def history(self) -> list[dict[str, Any]]:
        return list(self.session.events)

    def sessions(self) -> list[FakeSession]:
        return list(self._sessions.values())

    def resume(self, session_id: str) -> None:
        self.session_id = session_id

    def fork(self, turn: int) -> str:
        src = self.session
        sid = next(self._ids)
        self._sessions[sid] = FakeSession(
            sid, src.title + " (fork)", src.workspace, [e for e in src.events if e["turn"] <= turn], turn, src.tokens
        )
        self.session_id = sid
        return sid

    def rename(self, session_id: str, title: str) -> None:
        self._sessions[session_id].title = title

    def delete(self, session_id: str) -> None:
        del self._sessions[session_id]

    def rewind(self, turn: int, revert_files: bool = False) -> None:
        self.fork(turn)

    def undo(self) -> str:
        return "nothing to undo"
