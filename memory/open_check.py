"""The file check an existing SQLite store runs when it opens (`PRAGMA quick_check`), on a thread of
its own so that opening does not wait for it.

Why: quick_check reads every page of the file, cache pages' chunks included, on one core (about
0.08 s per GB on this project's CPU: most of a multi-GB snapshot load's time went into the open).
Its verdict only decides whether the store may WRITE (memory/store.py opens a damaged file read-only
so that nothing new is lost with it); every byte a load uses is verified against its digest anyway
(memory/blob_read.py). So the store reads through a read-only connection while the check runs, and
its first write (or a look at `Store.refusal`) waits for the verdict before the file is opened for
writing. Closing the store interrupts a check still running. On Linux the check's thread runs at
the lowest priority, so that on a busy host the load's own threads get the cores first.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from typing import Any

from hybrid_agent.memory.database import retry_busy, sqlite_damage
from sqlalchemy import Engine


class OpenCheck:
    """`sqlite_damage(engine)` on a daemon thread; `result()` waits for it (and raises what it raised)."""

    def __init__(self, engine: Engine, what: str) -> None:
        self._engine, self._what = engine, what
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._raw: sqlite3.Connection | None = None  # the connection running the check, to interrupt
        self._cancelled = False
        self._damage: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hybrid-agent-open-check", daemon=True)
        self._thread.start()

    def _started(self, raw: Any) -> None:
        with self._lock:
            if isinstance(raw, sqlite3.Connection):
                self._raw = raw
            if self._cancelled and self._raw is not None:
                self._raw.interrupt()

    def _run(self) -> None:
        if sys.platform == "linux":  # the nice value is per thread there: a load's workers go first
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, 19)
        try:
            self._damage = retry_busy(lambda: sqlite_damage(self._engine, started=self._started), self._what)
        except BaseException as exc:  # handed to whoever asks for the verdict
            self._error = exc
        finally:
            with self._lock:
                self._raw = None
            self._done.set()

    def result(self) -> str | None:
        """What quick_check found wrong (None: intact); raises the error the check raised."""
        if not self._done.is_set() and not self._thread.is_alive():  # a forked child: no thread there
            self._run()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._damage

    def cancel(self) -> None:
        """Stop a check still running (the store is closing) and wait for its thread."""
        with self._lock:
            self._cancelled = True
            if self._raw is not None:
                self._raw.interrupt()
        self._thread.join()
