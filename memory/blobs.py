"""Content-addressed, chunked blobs: their addresses, writing them, and deleting unreferenced ones.

A blob is cut into chunks of `CHUNK_SIZE` bytes, each stored as one `blob_chunks` row with its own
digest. The blob's address is a digest over (format tag, chunk size, total size, the chunk digests in
order) — a one-level hash list. Why not one digest of the whole bytes: chunk digests can be computed
in parallel (hashlib and blake3 release the GIL), so hashing a multi-GB snapshot uses every core, and
a failed check names the damaged chunk. It is still a pure function of the bytes, so identical bytes
share one blob.

Two digest algorithms (docs/design.md, "Blob digests", says why): new blobs use BLAKE3 (`blake3`,
several times sha256's speed on one core) and their addresses start with `b3:`; blobs written
before it (`sha256`, a bare 64-digit hex address) still verify with sha256. `blobs.algorithm` records
which one a row uses, and the address's form must agree with it.

Reading and verifying stored blobs is memory/blob_read.py's job.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import blake3
from hybrid_agent.memory.errors import StoreError
from hybrid_agent.memory.schema import Blob, BlobChunk, FileChangeRow, SnapshotRow, StatePageRow
from sqlalchemy import delete, exists, insert, or_, select
from sqlalchemy.orm import Session

CHUNK_SIZE = 4 << 20  # 4 MiB: large enough that per-row overhead is noise, small enough to stream
_FORMAT_TAG = b"hybrid-agent/blob/v1\0"  # sha256 addresses
_FORMAT_TAG_B3 = b"hybrid-agent/blob/v2/blake3\0"
B3_PREFIX = "b3:"  # a sha256 address is hex only, so no BLAKE3 address can equal one
ALGORITHMS = ("sha256", "blake3")
# What new blobs are written with. A module setting so that a test can write a database as a
# hybrid-agent without BLAKE3 did (sha256 everywhere).
WRITE_ALGORITHM = "blake3"
_PARALLEL_MIN_BYTES = 2 * CHUNK_SIZE  # below this a thread hand-off costs more than it saves
_BATCH = 500  # addresses in one IN list: under every backend's parameter limit
# Rounds of "insert, then lock" for blobs that other transactions store and delete meanwhile (each
# round needs another process to commit both in between).
_WRITE_ROUNDS = 5

log = logging.getLogger(__name__)

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


def _blake3(data: bytes | memoryview) -> str:
    # One thread per chunk: the pool already hashes several chunks at once.
    return blake3.blake3(data).hexdigest()


_CHUNK_DIGEST: dict[str, Callable[[bytes | memoryview], str]] = {"sha256": _sha256, "blake3": _blake3}


def chunk_digester(algorithm: str) -> Callable[[bytes | memoryview], str]:
    """The function that digests one chunk under `algorithm` (one of `ALGORITHMS`)."""
    return _CHUNK_DIGEST[algorithm]


def address_algorithm(address: str) -> str:
    """The algorithm an address's form says: `blake3` for `b3:...`, else `sha256`."""
    return "blake3" if address.startswith(B3_PREFIX) else "sha256"


def _parallel(size: int, n_chunks: int) -> bool:
    """Whether hashing (or placing) `n_chunks` chunks of `size` bytes in all is worth the pool."""
    return size >= _PARALLEL_MIN_BYTES and n_chunks > 1


def _digests(chunks: Sequence[bytes | memoryview], total: int, algorithm: str = "sha256") -> list[str]:
    digest = chunk_digester(algorithm)
    if not _parallel(total, len(chunks)):
        return [digest(c) for c in chunks]
    return list(_pool().map(digest, chunks))


def blob_address(size: int, chunk_size: int, chunk_digests: Iterable[str], algorithm: str = "sha256") -> str:
    """The address of a blob of `size` bytes whose chunks have `chunk_digests` under `algorithm`.

    BLAKE3 addresses are `b3:` and 61 hex digits (244 bits) so that they fit the 64-character
    columns that hold addresses on every backend."""
    if algorithm == "blake3":
        h: Any = blake3.blake3(_FORMAT_TAG_B3)
    else:
        h = hashlib.sha256(_FORMAT_TAG)
    h.update(f"{chunk_size}:{size}:".encode())
    for digest in chunk_digests:
        h.update(bytes.fromhex(digest))
    if algorithm == "blake3":
        return B3_PREFIX + h.hexdigest()[: 64 - len(B3_PREFIX)]
    return h.hexdigest()


@dataclass(frozen=True)
class PreparedBlob:
    """Bytes with their chunk digests and address, computed before any transaction is opened."""

    sha256: str  # the address (named as its column is, from when every address was a sha256)
    data: bytes | memoryview
    chunk_digests: list[str]
    algorithm: str = "sha256"

    @property
    def size(self) -> int:
        return len(self.data)

    def chunk(self, idx: int) -> memoryview:
        return memoryview(self.data)[idx * CHUNK_SIZE : (idx + 1) * CHUNK_SIZE]


def prepare_blob(data: bytes | memoryview, algorithm: str | None = None) -> PreparedBlob:
    """`data` with its chunk digests and address under `algorithm` (`WRITE_ALGORITHM` by default)."""
    algo = algorithm or WRITE_ALGORITHM
    view = memoryview(data).cast("B")  # sizes and slices in bytes, whatever the buffer's format
    chunks = [view[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    digests = _digests(chunks, len(view), algo)
    return PreparedBlob(blob_address(len(view), CHUNK_SIZE, digests, algo), view, digests, algo)


def _blob_row(blob: PreparedBlob) -> dict[str, Any]:
    return {
        "sha256": blob.sha256,
        "size": blob.size,
        "chunk_size": CHUNK_SIZE,
        "n_chunks": len(blob.chunk_digests),
        "algorithm": blob.algorithm,
        "created_at": datetime.now(UTC),
    }


def _write_chunks(session: Session, blob: PreparedBlob) -> None:
    # One statement per chunk keeps at most one chunk in flight in the driver.
    for idx, digest in enumerate(blob.chunk_digests):
        session.execute(
            insert(BlobChunk).values(blob_sha256=blob.sha256, idx=idx, sha256=digest, data=blob.chunk(idx))
        )


def _share_locked(session: Session, addresses: Sequence[str]) -> set[str]:
    """PostgreSQL: which of `addresses` are stored, each row locked FOR KEY SHARE (in address order)
    until this transaction ends, so that no other transaction deletes it meanwhile."""
    ordered = sorted(addresses)
    found: set[str] = set()
    for i in range(0, len(ordered), _BATCH):
        q = select(Blob.sha256).where(Blob.sha256.in_(ordered[i : i + _BATCH])).order_by(Blob.sha256)
        found.update(session.scalars(q.with_for_update(read=True, key_share=True)))
    return found


def write_blobs(session: Session, prepared: Sequence[PreparedBlob]) -> set[str]:
    """Store each blob unless it is stored already; the addresses whose bytes were written.

    A blob that is reused stays stored until the transaction that reuses it ends: on SQLite every
    write transaction holds the database's write lock (BEGIN IMMEDIATE), so nothing else runs; on
    PostgreSQL the reused rows are locked FOR KEY SHARE (all at once, in address order), which makes a
    concurrent `delete_unreferenced` (another server evicting saved prefixes) wait and then see this
    transaction's references. A row that such a delete removed before the lock was taken is written
    again here; two transactions storing the same new bytes meet at `ON CONFLICT DO NOTHING`.
    """
    unique = {b.sha256: b for b in prepared}
    written: set[str] = set()
    if session.get_bind().dialect.name != "postgresql":
        for address, blob in unique.items():
            if session.execute(select(Blob.sha256).where(Blob.sha256 == address)).first() is None:
                session.execute(insert(Blob).values(**_blob_row(blob)))
                _write_chunks(session, blob)
                written.add(address)
        return written
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    todo = sorted(set(unique) - _share_locked(session, sorted(unique)))
    for _ in range(_WRITE_ROUNDS):
        raced = []
        for address in todo:
            stmt = pg_insert(Blob).values(**_blob_row(unique[address])).on_conflict_do_nothing()
            if session.execute(stmt.returning(Blob.sha256)).first() is None:
                raced.append(address)  # another transaction stored it meanwhile
            else:
                _write_chunks(session, unique[address])
                written.add(address)
        # Locked like the others; one deleted again in between (stored, then evicted) goes round again.
        todo = sorted(set(raced) - _share_locked(session, raced))
        if not todo:
            return written
        names = ", ".join(a[:15] for a in todo)
        log.info("blobs %s were stored and deleted again by other transactions meanwhile: storing", names)
    raise StoreError(
        f"{len(todo)} blobs were stored and deleted again by other processes {_WRITE_ROUNDS} times "
        "while this transaction stored them; try again"
    )


def write_blob(session: Session, blob: PreparedBlob) -> bool:
    """Store `blob` unless it is already stored (`write_blobs`). Returns True if its bytes were written."""
    return bool(write_blobs(session, [blob]))


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
    """Delete blobs (and their chunks) that nothing references; all blobs when `candidates` is None.

    PostgreSQL: the candidates are locked FOR UPDATE (in address order, as `write_blobs` locks) before
    their references are counted. A transaction that reuses one of them either locked it first (this
    waits for it to end, then counts its rows: the blob stays) or waits for this one to end (then
    writes the blob again if it was deleted). Neither fails on a foreign key nor is rolled back."""
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
        unused = list(candidates)
    wanted = sorted(set(unused))
    if session.get_bind().dialect.name == "postgresql":
        wanted = sorted(_update_locked(session, wanted))
    unused = sorted(set(wanted) - referenced(session, wanted))
    for i in range(0, len(unused), _BATCH):
        batch = unused[i : i + _BATCH]
        # Chunks first and explicitly: correct even on a connection without foreign-key cascades.
        session.execute(delete(BlobChunk).where(BlobChunk.blob_sha256.in_(batch)))
        session.execute(delete(Blob).where(Blob.sha256.in_(batch)))
    return len(unused)


def _update_locked(session: Session, addresses: Sequence[str]) -> set[str]:
    """PostgreSQL: which of `addresses` (sorted) are stored, each row locked FOR UPDATE in address
    order until this transaction ends."""
    found: set[str] = set()
    for i in range(0, len(addresses), _BATCH):
        q = select(Blob.sha256).where(Blob.sha256.in_(addresses[i : i + _BATCH])).order_by(Blob.sha256)
        found.update(session.scalars(q.with_for_update()))
    return found
