"""`Agent`: one session at a time, one turn at a time, each turn ending in one snapshot.

A turn (docs/design.md, "One turn"): render the new segment only -> prefill it onto the state
-> decode, streaming `TextDelta`s, until end of turn or a complete tool call -> parse, approve, run the
call, prefill its result -> decode again ... -> one `save_turn` with the events, the recurrent state,
the cache pages since the last snapshot. A tool's file change is journaled on its own, durably,
before the file is written (agent/journal.py), so a process killed mid-turn can still undo it.

Design choices:
- All model work (prefill, decode, snapshot, restore, and the session operations that load a state)
  runs on one thread, the agent's `model_owner` (agent/owner.py), one request at a time, whoever the
  caller is (the TUI, `run`, the Python API): the caller's event loop never blocks and the engine is
  never used by two threads (docs/design.md, "Who runs the model").
- Whatever stops a turn before its snapshot (cancel, an error, the consumer going away) puts the
  engine back to the last snapshot, read from the database: the session stays exactly where it was,
  and the tool changes the turn made are still journaled (so undo and rewind can revert them).
- A new session's database row is written with its first durable change (agent/sessions.py): a run
  stopped before its first turn was saved, and before any tool wrote a file, leaves no session behind.
- Tool calls that cannot be run (malformed, unknown tool, bad arguments, denied) become results the
  model reads, never exceptions (agent/toolcalls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hybrid_agent.agent.decode_steps import SINGLE_TOKENS, write_tokens
from hybrid_agent.agent.engine import Engine
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.events import (
    AgentEvent,
    ApprovalDecision,
    ErrorEvent,
    TextDelta,
    TurnEnd,
)
from hybrid_agent.agent.hooks import HookOutcome, Hooks
from hybrid_agent.agent.journal import StoreJournal, attach_journal
from hybrid_agent.agent.mentions import DEFAULT_MENTION_MAX_BYTES, Mentions
from hybrid_agent.agent.mentions import expand as expand_mentions
from hybrid_agent.agent.owner import ModelOwner
from hybrid_agent.agent.permissions import PermissionRules
from hybrid_agent.agent.plan import MODES, Mode, PlanOps, plan_event
from hybrid_agent.agent.prefill import DEFAULT_MAX_PROMPT_TOKENS, PrefillOps
from hybrid_agent.agent.prefill import TurnCancelled as _Cancelled
from hybrid_agent.agent.prefix_cache import PrefixOps
from hybrid_agent.agent.project_memory import DEFAULT_PROJECT_MEMORY_MAX_BYTES, MemoryOps
from hybrid_agent.agent.records import (
    assistant_event,
    conversation_of,
    rebuild_segments,
    system_event,
    user_event,
    user_message,
)
from hybrid_agent.agent.sessions import SessionOps, title_of
from hybrid_agent.agent.stream import VisibleText
from hybrid_agent.agent.toolcalls import Approval, ToolCallOps
from hybrid_agent.memory import Event, Store, StoreError
from hybrid_agent.model.chat import DEFAULT_SYSTEM_PROMPT, ChatFormatError, ChatMessage
from hybrid_agent.model.errors import ModelError
from hybrid_agent.tools.errors import ToolError
from hybrid_agent.tools.registry import ToolRegistry

T = TypeVar("T")

# Errors a turn reports as an ErrorEvent (the user can act on them); anything else is a bug and raises.
USER_ERRORS = (AgentError, ChatFormatError, ModelError, StoreError, ToolError)


@dataclass
class _TurnStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Round:
    """One stretch of decoding: from a prefilled segment to a stop or a complete tool call."""

    raw: str = ""
    visible: str = ""
    stop: str = "end_of_turn"  # end_of_turn | tool_call | max_tokens


class Agent(SessionOps, PrefillOps, ToolCallOps, PlanOps, MemoryOps, PrefixOps):
    """The persistent agent. `Agent.open(...)` builds everything from paths; this is the long form."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        registry: ToolRegistry | None = None,
        *,
        workspace: str | Path = ".",
        session_id: str | None = None,
        mode: Mode = "ask",
        approval: Approval | None = None,
        permissions: PermissionRules | None = None,
        hooks: Hooks | None = None,
        enable_commands: bool = False,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_new_tokens: int = 1024,
        max_tool_rounds: int = 8,
        max_prompt_tokens: int | None = None,
        mention_max_bytes: int | None = None,
        project_memory_max_bytes: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise AgentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.engine = engine
        self.store = store
        self.workspace = Path(workspace).resolve()
        # Every file change goes to the session's file-change table, through this journal: a registry
        # given here gets it too (with its own in-memory journal, undo would forget across a resume).
        self._unwritten: dict[str, Any] | None = None
        self.journal = StoreJournal(store, self._session_row)
        if registry is None:
            registry = ToolRegistry(self.workspace, journal=self.journal, enable_commands=enable_commands)
        else:
            attach_journal(registry, self.journal)
        self.registry = registry
        self.mode = mode  # agent/plan.py: recorded when it changes
        self.approval = approval
        self.permissions = permissions  # the settings' allow/ask/deny rules (agent/permissions.py)
        self.hooks = hooks  # the settings' hooks (agent/hooks.py)
        self._hook_start = HookOutcome()  # the SessionStart hooks' runs, for the session's next turn
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.max_tool_rounds = max_tool_rounds
        self.max_prompt_tokens = max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS
        # The most of one @path file a message attaches (None: 64 KiB; 0: @path stays plain text).
        self.mention_max_bytes = DEFAULT_MENTION_MAX_BYTES if mention_max_bytes is None else mention_max_bytes
        # AGENTS.md read into a new session's system prompt, in bytes (None: 32 KiB; 0: none).
        self.project_memory_max_bytes = (
            DEFAULT_PROJECT_MEMORY_MAX_BYTES if project_memory_max_bytes is None else project_memory_max_bytes
        )
        self._memory_reload: dict[str, Any] | None = None
        # The thread every model operation runs on: the owner this agent is being built on (the UI
        # builds it on one), else a thread of its own, which `close` stops.
        adopted = ModelOwner.current()
        self.model_owner = adopted or ModelOwner()
        self._owns_thread = adopted is None
        self._cancel = threading.Event()
        self._running = False
        # "Always" answers, per tool, for the rest of the session (allow or reject).
        self._always: dict[str, ApprovalDecision] = {}
        self.session_id = ""
        self.turn = 0
        self._saved_tokens = 0
        self._system: str | None = None
        self._tools: list[dict[str, Any]] = []
        self._history: list[ChatMessage] = []
        # The attention policy new sessions get; a resumed session brings its own (agent/sessions.py).
        self._launch_policy = (engine.window, engine.sinks)
        if session_id is None:
            self.new_session()
        else:
            self.resume(session_id, keep_workspace=True)  # the caller chose `workspace`

    @classmethod
    def open(cls, **options: Any) -> Agent:
        """Build model + tokenizer + chat format + Store + ToolRegistry, and a session (new, or
        `resume=ID`). Options: see `hybrid_agent.agent.factory.open_agent`."""
        from hybrid_agent.agent.factory import open_agent

        return open_agent(cls, **options)

    # ---- what the UI shows -----------------------------------------------------------------------
    @property
    def state_tokens(self) -> int:
        return self.engine.n_tokens

    @property
    def state_bytes(self) -> int:
        return self.engine.state_bytes

    @property
    def window(self) -> int | None:
        return self.engine.window

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def device(self) -> str:
        return self.engine.device

    @property
    def running(self) -> bool:
        return self._running

    # ---- a turn ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running turn at the next token; the session stays at its last snapshot.
        Safe to call from any thread."""
        self._cancel.set()

    async def _on_model(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.model_owner.run(fn, *args)

    async def send(self, text: str) -> AsyncIterator[AgentEvent]:
        """Run one turn for the user's `text`, yielding events as they happen."""
        self._idle()
        self._running = True
        self._cancel.clear()
        self.journal.start_turn()
        if self._unwritten is not None:  # a new session is named after the message that writes its row
            self._unwritten["message"] = title_of(text)
        turn = self.turn + 1
        history_len = len(self._history)
        stats = _TurnStats()
        events: list[Event] = []
        finished = False  # saved, or rolled back to the last snapshot
        try:
            self._check_characters(text)
            # An imported session (agent/transfer.py) has a conversation but no state yet: this turn
            # reads all of it first, under this agent's own system prompt and tools.
            rebuild = self.turn == 0 and bool(self._history) and self.engine.n_tokens == 0
            if not self._history or rebuild:  # the session starts: its system prompt, with AGENTS.md
                memory = self.current_memory()
                self._system = memory.prompt(self.system_prompt)
                self._tools = self._offered_tools()  # in plan mode, the read-only ones (agent/plan.py)
                events.append(system_event(self._system, self._tools, self.engine.chat.name, memory.record()))
            events += self._take_notes()  # mode changes since the last turn (agent/plan.py)
            # What the SessionStart hooks said (agent/hooks.py), then the UserPromptSubmit hooks.
            started, self._hook_start = self._hook_start, HookOutcome()
            prompted = await self._run_hooks("UserPromptSubmit", prompt=text)
            for notice in started.notices() + prompted.notices():
                yield notice
            events += started.records() + prompted.records()
            if (blocked := prompted.blocked) is not None:
                finished = True  # nothing was read: the session is where it was, its notes recorded
                await self._keep(events)
                yield ErrorEvent(message=f"a UserPromptSubmit hook refused the prompt: {blocked.reason()}")
                return
            if rebuild:
                chat, system = self.engine.chat, self._system or ""
                for part in rebuild_segments(chat, self._history, system, self._tools):
                    ids = await self._on_model(self.engine.encode, part)
                    self._check_length(len(ids), "a message of the imported conversation")
                    async for progress in self._prefill(ids):
                        yield progress
                    stats.prompt_tokens += len(ids)
            memory_record = self._take_memory_reload()  # set by /memory reload (agent/project_memory.py)
            # The files of its @path words (agent/mentions.py); not of AGENTS.md's text when reloaded.
            mentioned = self._mentions(text) if memory_record is None else Mentions()
            for notice in mentioned.events():
                yield notice
            planning, note = self._plan_context()
            parts = (started.context, prompted.context, mentioned.context(), note)
            context = "\n\n".join(c for c in parts if c)
            records = mentioned.records()
            events.append(user_event(text, context, records, memory_record, plan_mode=planning))
            new = [user_message(text, context)]
            rounds = 0
            while True:
                segment = self.engine.chat.segment(
                    self._history, new, system=self._system or "", tools=self._tools
                )
                ids = await self._on_model(self.engine.encode, segment)
                what = "the tool output" if rounds else "the message"
                self._check_length(len(ids), what if self._history else f"{what} with the system prompt")
                t0 = time.perf_counter()
                n = 0  # a new session's system part: restored, or read alone and kept (agent/prefix_cache.py)
                if not rounds and not self._history and self.engine.n_tokens == 0:
                    n, key = await self._on_model(self._prefix_of, ids, self._system or "", self._tools)
                    if n and not await self._on_model(self._prefix_restore, key):
                        async for progress in self._prefill(ids, 0, n):
                            yield progress
                        await self._on_model(self._prefix_store, key)
                async for progress in self._prefill(ids, n):
                    yield progress
                stats.prefill_s += time.perf_counter() - t0  # (with the consumer's time per progress event)
                stats.prompt_tokens += len(ids)
                self._history.extend(new)
                rnd = _Round()
                async for delta in self._decode(rnd, stats):
                    yield delta
                self._history.append(ChatMessage("assistant", rnd.visible, raw=rnd.raw))
                events.append(assistant_event(rnd.visible, rnd.raw, rnd.stop))
                calls = self.engine.chat.parse_tool_calls(rnd.raw)
                stop_reason = "max_tokens" if rnd.stop == "max_tokens" else "end_of_turn"
                if not calls or rnd.stop == "max_tokens":
                    break
                if rounds >= self.max_tool_rounds:
                    stop_reason = "max_tool_rounds"
                    break
                rounds += 1
                new = []
                for i, call in enumerate(calls):
                    async for ev in self._tool_call(call, f"call_{turn}_{rounds}_{i}", turn, events, new):
                        yield ev
            stopped = await self._run_hooks("Stop", stop_reason=stop_reason)
            for notice in stopped.notices():
                yield notice
            events += stopped.records()
            # A plan-mode turn's final answer is its plan (agent/plan.py).
            plan = rnd.visible if planning and stop_reason != "max_tool_rounds" else None
            if plan is not None:
                events.append(plan_event(plan))
            end = await self._save(turn, events + self._take_notes(), stats, stop_reason)
            end.plan, self._after_plan = plan, planning
            finished = True
            yield end
        except _Cancelled:
            await self._roll_back(history_len)
            finished = True
            await self._keep(events, turn)
            yield self._turn_end(stats, saved=False, stop_reason="cancelled")
        except USER_ERRORS as exc:
            await self._roll_back(history_len)
            finished = True
            await self._keep(events, turn)
            yield ErrorEvent(message=str(exc))
        finally:
            if not finished:
                # The consumer went away mid-turn (or a bug): still leave the session consistent.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._roll_back(history_len))
                    await asyncio.shield(self._keep(events, turn))
            self._running = False

    async def _keep(self, events: list[Event], turn: int | None = None) -> None:
        """The hook runs and mode changes of a turn that is not saved still reach the session's events
        (agent/plan.py); not when the turn was saved after all (stopped while its save ran)."""
        if turn is not None and self.turn >= turn:
            return
        with contextlib.suppress(StoreError):  # (a read-only database: the turn failed for that too)
            await self._on_model(self._keep_notes, events)

    def _mentions(self, text: str) -> Mentions:
        if not self.mention_max_bytes:  # 0: mentions are off
            return Mentions()
        return expand_mentions(text, self.registry.workspace, self.mention_max_bytes)

    def _feed(self, tok: int | None) -> None:
        """The state holds every token the model wrote, the stop token too. A token is fed after its
        text went out, so the first token is shown before the first one-token step runs (on CUDA that
        step captures its graph: docs/results.md, cold start)."""
        if tok is not None:
            self.engine.prefill([tok])

    async def _decode(self, rnd: _Round, stats: _TurnStats) -> AsyncIterator[TextDelta]:
        """Write the message on the model's thread, several tokens a trip (agent/decode_steps.py)."""
        chat = self.engine.chat
        stream = self.engine.text_stream()
        visible = VisibleText(chat)
        t0 = time.perf_counter()
        tok: int | None = None  # written, not yet fed (`_feed`)
        tail, written = rnd.raw, 0
        try:
            while True:
                if self._cancel.is_set():
                    raise _Cancelled
                if stats.completion_tokens >= self.max_new_tokens:
                    rnd.stop = "max_tokens"
                    break
                limit = self.max_new_tokens - stats.completion_tokens
                single = written < SINGLE_TOKENS
                out = await self._on_model(
                    write_tokens, self.engine, stream, tok, tail, limit, self._cancel.is_set, single
                )
                tok, tail, written = out.last, out.tail, written + out.n
                stats.completion_tokens += out.n
                rnd.raw += out.text
                if delta := visible.push(out.text):
                    yield TextDelta(text=delta)
                if out.stop is not None:
                    rnd.stop = out.stop
                    break
            await self._on_model(self._feed, tok)
            tok = None
            rest = stream.flush()
            rnd.raw += rest
            visible.push(rest)
            if delta := visible.finish():
                yield TextDelta(text=delta)
            rnd.visible = chat.visible_text(rnd.raw)
        finally:
            stats.decode_s += time.perf_counter() - t0

    def _turn_end(
        self, stats: _TurnStats, *, saved: bool, stop_reason: Any, forked_from: str | None = None
    ) -> TurnEnd:
        return TurnEnd(
            session_id=self.session_id,
            turn=self.turn,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            state_tokens=self.engine.n_tokens,
            state_bytes=self.engine.state_bytes,
            window=self.engine.window,
            tokens_per_s=stats.completion_tokens / stats.decode_s if stats.decode_s > 0 else 0.0,
            saved=saved,
            stop_reason=stop_reason,
            forked_from=forked_from,
        )

    async def _save(self, turn: int, events: list[Event], stats: _TurnStats, stop_reason: str) -> TurnEnd:
        meta: dict[str, Any] = {
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "stop_reason": stop_reason,
            # What the status bar and /status show of a session's turns (agent/usage.py).
            "prefill_s": round(stats.prefill_s, 6),
            "decode_s": round(stats.decode_s, 6),
            "duration_s": round(time.perf_counter() - stats.started, 6),
        }

        forked_from = await self._on_model(self._write_turn, turn, events, meta)
        # Set here, not in `write`: a turn stopped while its save runs rolls back to the database's
        # turn, and `_roll_back` sees the save by `self.turn` still being the one before.
        self.turn, self._saved_tokens = turn, self.engine.n_tokens
        return self._turn_end(stats, saved=True, stop_reason=stop_reason, forked_from=forked_from)

    async def _roll_back(self, history_len: int) -> None:
        """Back to the last snapshot in the database. Usually that is `self.turn`; but if the turn was
        interrupted while its save was already running, the save completes first (same thread) and
        the database is one turn ahead: then the agent follows the database."""

        def restore() -> None:
            latest = self._latest_saved()
            if latest != self.turn:
                conv = conversation_of(self.store.events(self.session_id))
                self._system, self._tools, self._history = conv.system, conv.tools, conv.messages
                self.turn = latest
            else:
                del self._history[history_len:]
                if latest == 0:
                    self._system, self._tools = None, []
            if latest == 0:
                self.engine.reset()
            else:
                self._restore(self.session_id, latest)

        await self._on_model(restore)
        self._saved_tokens = self.engine.n_tokens

    # ---- the sync wrapper (the CLI) -----------------------------------------------------------------
    def send_sync(
        self, text: str, on_event: Callable[[AgentEvent], object] | None = None
    ) -> list[AgentEvent]:
        """`send` for synchronous callers, on a private event loop: runs the whole turn before it returns
        (whether or not the caller looks at the result) and returns its events; `on_event` sees each
        one as it happens (to stream the answer)."""
        loop = asyncio.new_event_loop()
        gen = self.send(text)
        events: list[AgentEvent] = []
        try:
            while True:
                try:
                    event = loop.run_until_complete(gen.__anext__())
                except StopAsyncIteration:
                    return events
                events.append(event)
                if on_event is not None:
                    on_event(event)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(gen.aclose())
            loop.close()

    def close(self) -> None:
        self._cancel.set()
        with contextlib.suppress(RuntimeError):  # RuntimeError: the owner's thread already stopped
            self.model_owner.call(lambda: None)  # after the model work already queued
        if self._owns_thread:
            self.model_owner.shutdown(wait=True)
        self._flush_notes()  # mode changes since the last turn (agent/plan.py)
        with contextlib.suppress(Exception):
            self.registry.close()
        self.store.close()
