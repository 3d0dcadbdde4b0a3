"""`ModelOwner`: the one thread that runs model work, whoever asks for it (docs/design.md, "Who runs
the model").

The engine and its live state are not thread-safe (agent/engine.py), and a turn's prefill, decode and
snapshot, a resume's load, a fork or a rewind all change that state. So every one of them is a request
to one worker thread, run one at a time in the order they came: the turn loop awaits them
(`ModelOwner.run`), the session operations call them (`ModelOwner.call`, the `owned` decorator), the UI
submits them (tui/bridge.py). A request made on the owner's own thread runs there at once, so an owned
operation may call another (a fork resumes) without waiting on itself.

An agent built on an owner's thread (the UI builds it there: loading the model is model work too)
takes that owner as its own (`ModelOwner.current()`); one built anywhere else starts its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")
THREAD_NAME = "hybrid-agent-model"

_here = threading.local()  # `.owner`: the ModelOwner whose thread this is, on that thread


class ModelOwner:
    """A single worker thread with a request queue (a one-thread executor), started on first use."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=name, initializer=self._started
        )
        self._thread: threading.Thread | None = None

    def _started(self) -> None:
        self._thread = threading.current_thread()
        _here.owner = self

    @staticmethod
    def current() -> ModelOwner | None:
        """The owner whose thread the caller is on, if any."""
        return getattr(_here, "owner", None)

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread (None until the first request)."""
        return self._thread

    def here(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Queue `fn(*args, **kwargs)` for the owner's thread."""
        return self._pool.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the owner's thread and wait for it (at once when already there)."""
        if self.here():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call` for a coroutine: the caller's event loop keeps running while the owner works."""
        if self.here():
            return fn(*args, **kwargs)
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the thread (from the owner's own thread: without waiting)."""
        self._pool.shutdown(wait=wait and not self.here())


def owned(method: Callable[Concatenate[Any, P], T]) -> Callable[Concatenate[Any, P], T]:
    """A method of an object with a `model_owner` that always runs on that owner's thread."""

    @functools.wraps(method)
    def on_owner(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.model_owner.call(method, self, *args, **kwargs)  # type: ignore[no-any-return]

    return on_owner
