"""Content-addressed, chunked blobs: their addresses, writing them, and deleting unreferenced ones.

A blob is cut into chunks of `CHUNK_SIZE` bytes, each stored as one `blob_chunks` row with its own
sha256. The blob's address is a sha256 over (format tag, chunk size, total size, the chunk digests in
order) — a one-level hash list. Why not sha256 of the whole bytes: chunk digests can be computed in
parallel (hashlib releases the GIL), so hashing a 500 MB snapshot uses every core, and a failed check
names the damaged chunk. It is still a pure function of the bytes, so identical bytes share one blob.

Reading and verifying stored blobs is memory/blob_read.py's job.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from hybrid_agent.memory.schema import Blob, BlobChunk, FileChangeRow, SnapshotRow, StatePageRow
from sqlalchemy import delete, exists, insert, or_, select
from sqlalchemy.orm import Session

CHUNK_SIZE = 4 << 20  # 4 MiB: large enough that per-row overhead is noise, small enough to stream
_FORMAT_TAG = b"hybrid-agent/blob/v1\0"
_PARALLEL_MIN_BYTES = 2 * CHUNK_SIZE  # below this a thread hand-off costs more than it saves

_executor: ThreadPoolExecutor | None = None
_WORKERS = max(1, min(16, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        # hashlib, numpy copies and sqlite3 blob reads release the GIL: one worker per core pays off.
        _executor = ThreadPoolExecutor(max_workers=_WORKERS)
    return _executor


def _forget_pool_after_fork() -> None:
    # Threads do not survive fork(); a child must build its own pool instead of waiting on dead workers.
    global _executor
    _executor = None


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _parallel(size: int, n_chunks: int) -> bool:
    """Whether hashing (or placing) `n_chunks` chunks of `size` bytes in all is worth the pool."""
    return size >= _PARALLEL_MIN_BYTES and n_chunks > 1


def _digests(chunks: Sequence[bytes | memoryview], total: int) -> list[str]:
    if not _parallel(total, len(chunks)):
        return [_sha256(c) for c in chunks]
    return list(_pool().map(_sha256, chunks))


def blob_address(size: int, chunk_size: int, chunk_digests: Iterable[str]) -> str:
    h = hashlib.sha256(_FORMAT_TAG)
    h.update(f"{chunk_size}:{size}:".encode())
    for digest in chunk_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


@dataclass(frozen=True)
class PreparedBlob:
    """Bytes with their chunk digests and address, computed before any transaction is opened."""

    sha256: str
    data: bytes | memoryview
    chunk_digests: list[str]

    @property
    def size(self) -> int:
        return len(self.data)

    def chunk(self, idx: int) -> memoryview:
        return memoryview(self.data)[idx * CHUNK_SIZE : (idx + 1) * CHUNK_SIZE]


def prepare_blob(data: bytes | memoryview) -> PreparedBlob:
    view = memoryview(data).cast("B")  # sizes and slices in bytes, whatever the buffer's format
    chunks = [view[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    digests = _digests(chunks, len(view))
    return PreparedBlob(blob_address(len(view), CHUNK_SIZE, digests), view, digests)


def _blob_exists(session: Session, sha256: str) -> bool:
    return session.execute(select(Blob.sha256).where(Blob.sha256 == sha256)).first() is not None


def write_blob(session: Session, blob: PreparedBlob) -> bool:
    """Store `blob` unless it is already stored. Returns True if its bytes were written.

    On SQLite every write transaction holds the database's write lock (BEGIN IMMEDIATE), so "check,
    then insert" cannot race. On PostgreSQL two sessions may store the same bytes at once:
    `ON CONFLICT DO NOTHING` makes the second wait for the first and then skip.
    """
    row = {
        "sha256": blob.sha256,
        "size": blob.size,
        "chunk_size": CHUNK_SIZE,
        "n_chunks": len(blob.chunk_digests),
        "created_at": datetime.now(UTC),
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(Blob).values(**row).on_conflict_do_nothing().returning(Blob.sha256)
        if session.execute(stmt).first() is None:
            return False
    else:
        if _blob_exists(session, blob.sha256):
            return False
        session.execute(insert(Blob).values(**row))
    # One statement per chunk keeps at most one chunk in flight in the driver.
    for idx, digest in enumerate(blob.chunk_digests):
        session.execute(
            insert(BlobChunk).values(blob_sha256=blob.sha256, idx=idx, sha256=digest, data=blob.chunk(idx))
        )
    return True


def referenced(session: Session, sha256s: Iterable[str]) -> set[str]:
    """The subset of `sha256s` that some snapshot, page or file change still points at."""
    wanted = sorted(set(sha256s))
    found: set[str] = set()
    for i in range(0, len(wanted), 500):  # keep the IN list under every backend's parameter limit
        batch = wanted[i : i + 500]
        found.update(
            session.scalars(select(SnapshotRow.recurrent_blob).where(SnapshotRow.recurrent_blob.in_(batch)))
        )
        found.update(
            session.scalars(select(StatePageRow.blob_sha256).where(StatePageRow.blob_sha256.in_(batch)))
        )
        found.update(
            session.scalars(select(FileChangeRow.before_blob).where(FileChangeRow.before_blob.in_(batch)))
        )
        found.update(
            session.scalars(select(FileChangeRow.after_blob).where(FileChangeRow.after_blob.in_(batch)))
        )
    return found


def delete_unreferenced(session: Session, candidates: Iterable[str] | None = None) -> int:
    """Delete blobs (and their chunks) that nothing references; all blobs when `candidates` is None."""
    if candidates is None:
        unused = list(
            session.scalars(
                select(Blob.sha256).where(
                    ~exists().where(SnapshotRow.recurrent_blob == Blob.sha256),
                    ~exists().where(StatePageRow.blob_sha256 == Blob.sha256),
                    ~exists().where(
                        or_(FileChangeRow.before_blob == Blob.sha256, FileChangeRow.after_blob == Blob.sha256)
                    ),
                )
            )
        )
    else:
        wanted = set(candidates)
        unused = sorted(wanted - referenced(session, wanted))
    for i in range(0, len(unused), 500):
        batch = unused[i : i + 500]
        # Chunks first and explicitly: correct even on a connection without foreign-key cascades.
        session.execute(delete(BlobChunk).where(BlobChunk.blob_sha256.in_(batch)))
        session.execute(delete(Blob).where(Blob.sha256.in_(batch)))
    return len(unused)
