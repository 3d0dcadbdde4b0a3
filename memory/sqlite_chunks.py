"""Reading blob chunks through SQLite's incremental-blob API, also on extra parallel connections.

Used by memory/blob_read.py's load pipeline on SQLite files; other backends read chunk rows with
ordinary queries there.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator

from hybrid_agent.memory.blobs import _WORKERS
from hybrid_agent.memory.errors import CorruptDataError
from sqlalchemy.orm import Session


def _sqlite_connection(session: Session) -> sqlite3.Connection | None:
    """The session's own sqlite3 connection (same read transaction) if it can open blob handles."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    raw = session.connection().connection.driver_connection
    return raw if isinstance(raw, sqlite3.Connection) and hasattr(raw, "blobopen") else None


READER_MMAP_BYTES = 0  # PRAGMA mmap_size of the parallel readers (SQLite caps it, 2 GB by default)


class ChunkReaders:
    """Extra SQLite connections for reading chunks in parallel, handed out one per worker at a time.

    Why: one connection serialises its calls, so a single reader caps a load at one core's copy
    speed. Each extra connection is read-only and opens its own read transaction when it is made,
    which may be NEWER than the caller's. That is safe because stored chunks never change (blobs are
    content-addressed: a row is inserted once and only ever deleted): a chunk such a connection finds
    has the bytes the caller's snapshot has, and the sha256 check tells. A chunk it cannot find or
    that fails the check (deleted meanwhile, its rowid reused) is read again through the caller's own
    connection, whose verdict is the only one that can raise `CorruptDataError`."""

    def __init__(self, path: str, limit: int) -> None:
        self._uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        self._limit = limit
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _take(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) >= self._limit:
                return self._idle.get()
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False, isolation_level=None)
            self._all.append(conn)
        if READER_MMAP_BYTES:
            # Blob reads copy straight out of the mapped file instead of pread-ing each page into
            # SQLite's cache first: one copy of every byte fewer. Read-only and short-lived
            # connections; the file shrinks only in `Store.compact`'s checkpoint, which does not
            # truncate pages while a reader's snapshot may still need them.
            conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
        conn.execute("BEGIN")  # one read snapshot for this connection's whole share of the load
        conn.execute("SELECT 1 FROM blob_chunks LIMIT 1").fetchall()
        return conn

    def read(self, rowid: int) -> bytes | None:
        """Chunk `rowid`'s stored bytes, or None if this connection cannot read it."""
        try:
            conn = self._take()
        except sqlite3.Error:
            return None
        try:
            with conn.blobopen("blob_chunks", "data", rowid, readonly=True) as handle:
                return handle.read()
        except sqlite3.Error:
            return None
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        for conn in self._all:
            with contextlib.suppress(sqlite3.Error):
                conn.close()  # ends its read transaction (nothing was written)
        self._all.clear()


@contextlib.contextmanager
def chunk_readers(session: Session) -> Iterator[ChunkReaders | None]:
    """Parallel chunk readers for a load in `session` (SQLite files only; None elsewhere)."""
    from hybrid_agent.memory.database import readable_sqlite_file

    # Read-only stores (and a store whose open check is still running) read through a `mode=ro` URL.
    path = readable_sqlite_file(session.get_bind().url) if _sqlite_connection(session) is not None else None
    if path is None or _WORKERS < 2:
        yield None
        return
    readers = ChunkReaders(str(path), _WORKERS)
    try:
        yield readers
    finally:
        readers.close()


def _read_own(conn: sqlite3.Connection, rowid: int, idx: int, sha256: str, what: str) -> bytes:
    try:
        with conn.blobopen("blob_chunks", "data", rowid, readonly=True) as handle:
            return handle.read()
    except sqlite3.Error as exc:
        raise CorruptDataError(
            f"{what}: chunk {idx} of blob {sha256[:16]} could not be read ({exc})"
        ) from exc
