"""SQLite WAL checkpoints on a background thread.

A commit is durable once it is in the write-ahead log (synchronous=FULL fsyncs the log). Copying the
log back into the main file (the checkpoint) is the same number of bytes again, plus another fsync;
SQLite does it by default inside the COMMIT that crosses the size threshold, so a 500 MB snapshot
would be written twice before `save_turn` returns. Our connections switch that off
(`wal_autocheckpoint = 0`) and this thread runs a PASSIVE checkpoint after each write transaction
instead: `save_turn` returns when the turn is durable, and the copy overlaps with the next turn.

PASSIVE never blocks readers or writers; whatever it could not copy is copied next time. If the
process dies first, the log is still a valid part of the database and the next writer (or SQLite's
own close of the last connection) checkpoints it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from pathlib import Path

_live: weakref.WeakSet[WalCheckpointer] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # In a forked child the thread does not exist and a lock it held would stay held forever.
    for inst in list(_live):
        inst._thread = None
        inst._lock = threading.Lock()
        inst._wake = threading.Event()


class WalCheckpointer:
    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one checkpoint at a time (background or `run_now`)
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """A write transaction committed: checkpoint soon (starts the thread on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="hybrid-agent-wal-checkpoint", daemon=True
            )
            _live.add(self)
            self._thread.start()
        self._wake.set()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        return conn

    def _loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                # Busy or closing: the next poke (or SQLite's close of the last connection) finishes it.
                with self._lock, contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def run_now(self) -> tuple[int, int, int]:
        """Checkpoint everything now and truncate the log, waiting for readers and writers.
        Returns SQLite's (busy, log frames, frames checkpointed)."""
        with self._lock:
            conn = self._connect()
            try:
                busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.close()
        return busy, log, done

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _live.discard(self)


os.register_at_fork(after_in_child=_forget_after_fork)
