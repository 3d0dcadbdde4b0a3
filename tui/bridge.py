"""The agent on its own thread, with its own event loop.

Why a thread and not just an async worker: a turn is CPU/GPU work (prefill, decode, tools, a
snapshot commit) and the agent is free to do it synchronously between its `yield`s. On the UI's loop
that would freeze the screen; on a thread of its own it cannot. Every call into the agent goes
through this one thread, so the agent never sees two threads at once (its SQLite connection and its
model state are not shared). Events come back over an asyncio.Queue on the UI loop, and approval
questions go the other way as coroutines run on the UI loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from hybrid_agent.agent.events import AgentEvent, ApprovalDecision, ErrorEvent, ToolCallRequested

T = TypeVar("T")
_DONE = object()
FRAME_S = 1 / 60  # the UI takes the agent's events at most once per frame


class AgentBridgeError(RuntimeError):
    """The agent thread is not running (not started, or already closed)."""


def error_text(exc: BaseException) -> str:
    """A message for the screen: our own errors already say what to do; others get their type name."""
    text = str(exc) or type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    return text if module in ("agent", "model", "memory", "tools") else f"{type(exc).__name__}: {text}"


class AgentBridge:
    def __init__(self, ask_user: Callable[[ToolCallRequested], Awaitable[ApprovalDecision]]) -> None:
        self._ask_user = ask_user  # runs on the UI loop
        self._ui_loop: asyncio.AbstractEventLoop | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent", daemon=True)
        self.agent: Any = None
        self.turn_running = False
        self._pump: concurrent.futures.Future[None] | None = None  # the running turn, on the agent loop

    def start(self) -> None:
        self._ui_loop = asyncio.get_running_loop()
        self._thread.start()

    async def open(self, factory: Callable[..., Any]) -> Any:
        """Build the agent on its thread: `factory(approval=...)` where approval is the callback the
        agent awaits when a tool needs the user's answer."""
        self.agent = await self.call(factory, approval=self.approval)
        return self.agent

    async def approval(self, call: ToolCallRequested) -> ApprovalDecision:
        """Runs on the agent loop: hand the question to the UI loop and wait for the answer."""
        assert self._ui_loop is not None
        future = asyncio.run_coroutine_threadsafe(self._ask_user(call), self._ui_loop)
        return await asyncio.wrap_future(future)

    async def call(self, fn: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the agent thread (awaiting it there if it is a coroutine)."""
        if not self._thread.is_alive():
            raise AgentBridgeError("the agent thread is not running; restart hybrid-agent")

        async def run() -> T:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                return await result  # type: ignore[no-any-return]
            return result  # type: ignore[return-value]

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self._loop))

    async def stream(self, text: str) -> AsyncIterator[list[AgentEvent]]:
        """Send a message; yield the events in batches: everything that arrived since the last batch.

        Batching is what keeps hundreds of tokens/s smooth: the UI handles one batch per wake-up,
        and consecutive text deltas in it become one Markdown append.
        """
        assert self._ui_loop is not None
        ui_loop = self._ui_loop
        queue: asyncio.Queue[object] = asyncio.Queue()
        put = lambda item: ui_loop.call_soon_threadsafe(queue.put_nowait, item)

        async def pump() -> None:
            try:
                async for event in self.agent.send(text):
                    put(event)
            except Exception as exc:  # the turn failed: the session stays at its last snapshot
                put(ErrorEvent(message=error_text(exc)))
            finally:
                put(_DONE)

        self.turn_running = True
        try:
            self._pump = asyncio.run_coroutine_threadsafe(pump(), self._loop)
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
        """Ask the running turn to stop. Called from the UI thread directly, not through the agent
        loop: that loop may be busy decoding and would only get to a queued call after the turn."""
        if self.agent is not None:
            self.agent.cancel()

    async def close(self, timeout: float = 10.0) -> None:
        """Close the agent on its thread (it commits nothing half-done) and stop the thread."""
        if self._thread.is_alive():
            if self._pump is not None and not self._pump.done():
                # Let the cancelled turn roll back to its snapshot; only then close under it.
                self.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._pump)), timeout)
                except (TimeoutError, Exception):
                    # Stuck: cancel the task and give the agent loop a moment to unwind it, so no
                    # half-run coroutine is left behind when the loop stops.
                    self._pump.cancel()
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.wrap_future(self._pump), 1.0)
            close = getattr(self.agent, "close", None)
            if close is not None:
                # Exiting anyway if this fails: each snapshot is one transaction, the database stays whole.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.call(close), timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, timeout)
