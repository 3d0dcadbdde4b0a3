"""The UI's side of the agent: requests to the agent's model thread, and a turn's events in batches.

The UI never runs model work itself and never starts a thread or an event loop for it: the agent's one
model owner (agent/owner.py) does all of it. This bridge makes that owner before the agent exists,
builds the agent on it (loading a model is model work; the agent keeps the owner it was built on),
and then submits every call to it (`call`), awaiting the answer, so the screen keeps drawing. A turn
is `agent.send` run as a task on the UI's loop: between its steps it only awaits the owner, and its
events come back through a queue, drawn at most once per frame (`stream`). Approval questions are the
UI's own coroutine, awaited by the turn on the same loop. See docs/design.md, "Who runs the model".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from hybrid_agent.agent.events import AgentEvent, ApprovalDecision, ErrorEvent, ToolCallRequested
from hybrid_agent.agent.owner import ModelOwner

T = TypeVar("T")
_DONE = object()
FRAME_S = 1 / 60  # the UI takes the agent's events at most once per frame


class AgentBridgeError(RuntimeError):
    """The agent's model thread is not running (not started, or already closed)."""


def error_text(exc: BaseException) -> str:
    """A message for the screen: our own errors already say what to do; others get their type name."""
    text = str(exc) or type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    return text if module in ("agent", "model", "memory", "tools") else f"{type(exc).__name__}: {text}"


class AgentBridge:
    def __init__(self, ask_user: Callable[[ToolCallRequested], Awaitable[ApprovalDecision]]) -> None:
        self._ask_user = ask_user  # runs on the UI loop, awaited there by the turn
        self.owner: ModelOwner | None = None
        self.agent: Any = None
        self.turn_running = False
        self._closed = False
        self._pump: asyncio.Task[None] | None = None  # the running turn, a task on the UI loop

    def start(self) -> None:
        self.owner = ModelOwner()  # its thread starts with the first request

    async def open(self, factory: Callable[..., Any]) -> Any:
        """Build the agent on the model's thread: `factory(approval=...)` where approval is the
        callback the agent awaits when a tool needs the user's answer."""
        self.agent = await self.call(factory, approval=self._ask_user)
        own = getattr(self.agent, "model_owner", None)
        if own is not None and own is not self.owner:
            # An agent built elsewhere (a factory handing back one made before) has an owner of its
            # own: every request goes there, and the thread that ran the factory is done.
            assert self.owner is not None
            self.owner.shutdown(wait=False)
            self.owner = own
        return self.agent

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the model's thread; the UI loop keeps running meanwhile."""
        if self.owner is None or self._closed:
            raise AgentBridgeError("the agent's model thread is not running; restart hybrid-agent")
        return await self.owner.run(fn, *args, **kwargs)

    async def stream(self, text: str) -> AsyncIterator[list[AgentEvent]]:
        """Send a message; yield the events in batches: everything that arrived since the last batch.

        Batching is what keeps hundreds of tokens/s smooth: the UI handles one batch per wake-up,
        and consecutive text deltas in it become one Markdown append.
        """
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self.agent.send(text):
                    queue.put_nowait(event)
            except Exception as exc:  # the turn failed: the session stays at its last snapshot
                queue.put_nowait(ErrorEvent(message=error_text(exc)))
            finally:
                queue.put_nowait(_DONE)

        self.turn_running = True
        try:
            # A task of its own, not this generator: when the worker drawing the turn is cancelled
            # (at shutdown), the turn still runs to its end or its roll-back, and `close` waits for it.
            self._pump = asyncio.get_running_loop().create_task(pump())
            while True:
                batch = [await queue.get()]
                if batch[0] is not _DONE:
                    # At most one batch per frame: whatever arrives within the frame joins this one,
                    # so the UI's work is bounded by the frame rate, not by the model's speed.
                    await asyncio.sleep(FRAME_S)
                while not queue.empty():
                    batch.append(queue.get_nowait())
                done = batch[-1] is _DONE
                events = [e for e in batch if e is not _DONE]
                if events:
                    yield events  # type: ignore[misc]
                if done:
                    return
        finally:
            self.turn_running = False

    def cancel(self) -> None:
        """Ask the running turn to stop. A flag the model's thread reads between tokens: no request
        queued behind the turn's steps."""
        if self.agent is not None:
            self.agent.cancel()

    async def close(self, timeout: float = 10.0) -> None:
        """Let a running turn roll back, close the agent on the model's thread (it commits nothing
        half-done), and stop that thread."""
        if self.owner is None or self._closed:
            return
        if self._pump is not None and not self._pump.done():
            # Let the cancelled turn roll back to its snapshot; only then close under it.
            self.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), timeout)
            except (TimeoutError, Exception):
                # Stuck: cancel the task and give it a moment to unwind (its roll-back is queued on
                # the model's thread), so no half-run coroutine is left behind.
                self._pump.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self._pump, 1.0)
        close = getattr(self.agent, "close", None)
        if close is not None:
            # Exiting anyway if this fails: each snapshot is one transaction, the database stays whole.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call(close), timeout)
        self._closed = True
        owner = self.owner
        owner.shutdown(wait=False)  # what is queued still runs; then the thread ends
        if owner.thread is not None:
            await asyncio.to_thread(owner.thread.join, timeout)
