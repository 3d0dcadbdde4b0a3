"""Reading and verifying stored blobs (their layout and addresses: memory/blobs.py).

Every read recomputes every chunk digest and the address from them, with the algorithm the blob's row
names (sha256 or BLAKE3, memory/blobs.py); any mismatch raises `CorruptDataError` naming what was
being read.

Reading a large blob (`read_blob_tensor`, what snapshot loads use) is a pipeline, so that it runs at
the speed of its slowest stage instead of the sum of all of them: the calling thread pulls chunks out
of the database one at a time (on SQLite through the incremental-blob API: one copy out of the page
cache, with the GIL released), and a thread pool hashes each chunk and copies it to its place in ONE
preallocated buffer (no per-chunk joins). For a CUDA destination the pool copies each verified chunk
through a small ring of pinned host buffers straight into the GPU buffer (no pageable host copy of the
whole blob, and no multi-GB page-locking at load time). The buffer is fresh and nothing outside this
module sees it before every chunk and the address have been verified.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait

import numpy as np
import torch
from hybrid_agent.memory.blobs import (
    _WORKERS,
    ALGORITHMS,
    _digests,
    _parallel,
    _pool,
    address_algorithm,
    blob_address,
    chunk_digester,
)
from hybrid_agent.memory.errors import CorruptDataError
from hybrid_agent.memory.schema import Blob, BlobChunk
from hybrid_agent.memory.sqlite_chunks import ChunkReaders, _read_own, _sqlite_connection
from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session


def _failed(what: str, sha256: str, algorithm: str, idx: int | None = None) -> CorruptDataError:
    part = "" if idx is None else f"chunk {idx} of "
    return CorruptDataError(
        f"{what}: {part}blob {sha256[:16]} failed its {algorithm} check (stored bytes damaged)"
    )


def _algorithm(sha256: str, stored: str, what: str) -> str:
    """The blob's digest algorithm, after checking that its row and its address's form agree (a
    changed `algorithm` cell would otherwise pick the check)."""
    if stored not in ALGORITHMS or address_algorithm(sha256) != stored:
        raise CorruptDataError(
            f"{what}: blob {sha256[:16]} records digest algorithm {stored!r}, which its address does "
            "not have (the database was damaged or written by a newer hybrid-agent)"
        )
    return stored


def read_blob(session: Session, sha256: str, *, what: str) -> bytes:
    """The verified bytes of blob `sha256`; `what` says what it is (session, turn, part) for errors."""
    head = session.execute(
        select(Blob.size, Blob.chunk_size, Blob.n_chunks, Blob.algorithm).where(Blob.sha256 == sha256)
    ).first()
    if head is None:
        raise CorruptDataError(f"{what}: blob {sha256[:16]} is missing from the database")
    size, chunk_size, n_chunks, stored_algorithm = head
    algorithm = _algorithm(sha256, stored_algorithm, what)
    rows = session.execute(
        select(BlobChunk.idx, BlobChunk.sha256, BlobChunk.data)
        .where(BlobChunk.blob_sha256 == sha256)
        .order_by(BlobChunk.idx)
    ).all()
    chunks = [bytes(r.data) for r in rows]  # psycopg returns memoryview-like bytea; sqlite3 bytes
    if [r.idx for r in rows] != list(range(n_chunks)):
        raise CorruptDataError(f"{what}: blob {sha256[:16]} has {len(rows)} of its {n_chunks} chunks")
    digests = _digests(chunks, size, algorithm)
    for r, digest in zip(rows, digests, strict=True):
        if digest != r.sha256:
            raise _failed(what, sha256, algorithm, r.idx)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) != size or blob_address(size, chunk_size, digests, algorithm) != sha256:
        raise _failed(what, sha256, algorithm)
    return data


class _PinnedRing:
    """`slots` pinned host buffers of `chunk_size` bytes for one CUDA device, reused by every load in
    the process (page-locking is slow: doing it once for a few MiB beats doing it per load for GBs).
    Slot i % slots carries chunk i; an event per slot says when its last copy to the GPU finished."""

    def __init__(self, chunk_size: int, slots: int) -> None:
        self.bufs = [torch.empty(chunk_size, dtype=torch.uint8, pin_memory=True) for _ in range(slots)]
        self.views = [b.numpy() for b in self.bufs]
        self.events: list[torch.cuda.Event | None] = [None] * slots
        self.lock = threading.Lock()  # one blob at a time: concurrent loads would share slots


_staging: dict[tuple[str, int], _PinnedRing] = {}
_staging_lock = threading.Lock()


def _forget_staging_after_fork() -> None:
    # A lock held by a thread that fork() did not copy would stay held in the child forever.
    global _staging_lock
    _staging.clear()
    _staging_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_staging_after_fork)


def _ring(device: torch.device, chunk_size: int) -> _PinnedRing:
    key = (str(device), chunk_size)
    with _staging_lock:  # two first loads at once must share one ring (and its lock)
        if key not in _staging:
            _staging[key] = _PinnedRing(chunk_size, _in_flight())
        return _staging[key]


def _in_flight() -> int:
    # Chunks read but not yet placed: enough to keep every worker busy while the reader runs ahead,
    # few enough that a multi-GB load never holds more than a few dozen MiB of chunk copies.
    return _WORKERS + 2


ChunkRow = tuple[int, str, int | None]  # (idx, stored digest, SQLite rowid or None)


def _chunk_index(session: Session, sha256: str, what: str) -> tuple[int, int, list[ChunkRow], str]:
    """(size, chunk_size, [(idx, stored digest, SQLite rowid or None)], digest algorithm) after
    checking the chunk count and the algorithm."""
    head = session.execute(
        select(Blob.size, Blob.chunk_size, Blob.n_chunks, Blob.algorithm).where(Blob.sha256 == sha256)
    ).first()
    if head is None:
        raise CorruptDataError(f"{what}: blob {sha256[:16]} is missing from the database")
    size, chunk_size, n_chunks, stored_algorithm = head
    algorithm = _algorithm(sha256, stored_algorithm, what)
    sqlite = session.get_bind().dialect.name == "sqlite"
    rowid = literal_column("blob_chunks.rowid") if sqlite else literal_column("NULL")
    rows = [
        (int(r[0]), str(r[1]), None if r[2] is None else int(r[2]))
        for r in session.execute(
            select(BlobChunk.idx, BlobChunk.sha256, rowid)
            .where(BlobChunk.blob_sha256 == sha256)
            .order_by(BlobChunk.idx)
        )
    ]
    if [r[0] for r in rows] != list(range(n_chunks)):
        raise CorruptDataError(f"{what}: blob {sha256[:16]} has {len(rows)} of its {n_chunks} chunks")
    if chunk_size <= 0 or size < 0 or n_chunks != -(-size // chunk_size):  # every byte gets written
        raise CorruptDataError(f"{what}: blob {sha256[:16]} has an inconsistent size record")
    return size, chunk_size, rows, algorithm


def _chunk_data(session: Session, sha256: str, rows: list[ChunkRow], what: str) -> Iterator[bytes]:
    """The chunks' stored bytes in order, one at a time (never the whole blob at once)."""
    conn = _sqlite_connection(session)
    if conn is not None and all(r[2] is not None for r in rows):
        for idx, _, rowid in rows:
            assert rowid is not None
            # sqlite3_blob_read runs with the GIL released: the pool hashes earlier chunks meanwhile.
            yield _read_own(conn, rowid, idx, sha256, what)
        return
    stmt = (
        select(BlobChunk.data)
        .where(BlobChunk.blob_sha256 == sha256)
        .order_by(BlobChunk.idx)
        .execution_options(yield_per=4)  # a server-side cursor on PostgreSQL: a few chunks at a time
    )
    for (data,) in session.execute(stmt):
        yield bytes(data)  # psycopg returns bytea as bytes or memoryview; sqlite3 as bytes


Placer = Callable[[int, int, bytes], None]  # (chunk index, byte offset, verified bytes)


def _cpu_placer(buf: torch.Tensor) -> Placer:
    view = buf.numpy()

    def place(_idx: int, off: int, data: bytes) -> None:
        view[off : off + len(data)] = np.frombuffer(data, dtype=np.uint8)  # numpy releases the GIL

    return place


def _cuda_placer(buf: torch.Tensor, chunk_size: int) -> Placer:
    ring = _ring(buf.device, chunk_size)
    stream = torch.cuda.current_stream(buf.device)  # the caller's: what it runs next is ordered after
    n = len(ring.bufs)

    def place(idx: int, off: int, data: bytes) -> None:
        slot = idx % n
        done = ring.events[slot]
        if done is not None:
            done.synchronize()  # chunk idx - n's copy out of this slot has finished
        ring.views[slot][: len(data)] = np.frombuffer(data, dtype=np.uint8)
        with torch.cuda.stream(stream):
            buf[off : off + len(data)].copy_(ring.bufs[slot][: len(data)], non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        ring.events[slot] = event

    return place


Digester = Callable[[bytes | memoryview], str]


def _check_chunk(
    data: bytes, idx: int, want: int, digest: str, off: int, place: Placer, hasher: Digester
) -> bool:
    if len(data) != want or hasher(data) != digest:
        return False
    place(idx, off, data)
    return True


def _read_check_place(
    readers: ChunkReaders,
    rowid: int,
    idx: int,
    want: int,
    digest: str,
    off: int,
    place: Placer,
    hasher: Digester,
) -> bool:
    data = readers.read(rowid)
    return data is not None and _check_chunk(data, idx, want, digest, off, place, hasher)


def _popped(pending: deque[tuple[int, Future[bool]]]) -> tuple[int, bool]:
    idx, fut = pending.popleft()
    return idx, fut.result()


def read_blob_tensor(
    session: Session,
    sha256: str,
    *,
    what: str,
    device: torch.device | str | None = None,
    readers: ChunkReaders | None = None,
) -> torch.Tensor:
    """The verified bytes of blob `sha256` as one fresh uint8 tensor on `device` (CPU by default).

    Same guarantees as `read_blob`: every chunk's digest and the address are checked, a failure raises
    `CorruptDataError` naming `what` and the chunk, and no byte reaches the caller before that.
    With `readers` (see `chunk_readers`) the pool's workers also read the chunks, in parallel."""
    dev = torch.device(device if device is not None else "cpu")
    size, chunk_size, rows, algorithm = _chunk_index(session, sha256, what)
    buf = torch.empty(size, dtype=torch.uint8, device=dev)
    staged: torch.Tensor | None = None
    if dev.type == "cuda":
        place = _cuda_placer(buf, chunk_size)
    elif dev.type == "cpu":
        place = _cpu_placer(buf)
    else:  # another accelerator: verify into host memory, then one copy
        staged = torch.empty(size, dtype=torch.uint8)
        place = _cpu_placer(staged)
    ring_lock = _ring(dev, chunk_size).lock if dev.type == "cuda" else contextlib.nullcontext()
    with ring_lock:
        _fill(session, sha256, what, size, chunk_size, rows, place, readers, algorithm)
    # Each chunk matched its stored digest and length, so the address over those digests is the check
    # that the chunk list itself belongs to this blob.
    if blob_address(size, chunk_size, [r[1] for r in rows], algorithm) != sha256:
        raise _failed(what, sha256, algorithm)
    if staged is not None:
        buf.copy_(staged)
    return buf


def _fill(
    session: Session,
    sha256: str,
    what: str,
    size: int,
    chunk_size: int,
    rows: list[ChunkRow],
    place: Placer,
    readers: ChunkReaders | None = None,
    algorithm: str = "sha256",
) -> None:
    parallel = _parallel(size, len(rows))
    hasher = chunk_digester(algorithm)
    pending: deque[tuple[int, Future[bool]]] = deque()
    limit = _in_flight()

    def settle(idx: int, ok: bool) -> None:
        if not ok:
            raise _failed(what, sha256, algorithm, idx)

    conn = _sqlite_connection(session) if readers is not None else None
    if parallel and conn is not None and readers is not None and all(r[2] is not None for r in rows):
        spec = {idx: (rowid, digest) for idx, digest, rowid in rows}

        def second_look(idx: int, ok: bool) -> None:
            # A reader's miss or mismatch is only a hint: the caller's own snapshot decides.
            if not ok:
                rowid, digest = spec[idx]
                assert rowid is not None and conn is not None
                off = idx * chunk_size
                data = _read_own(conn, rowid, idx, sha256, what)
                settle(idx, _check_chunk(data, idx, min(chunk_size, size - off), digest, off, place, hasher))

        try:
            for idx, digest, rowid in rows:
                while len(pending) >= limit:
                    second_look(*_popped(pending))
                off = idx * chunk_size
                want = min(chunk_size, size - off)
                task = _pool().submit(
                    _read_check_place, readers, rowid, idx, want, digest, off, place, hasher
                )
                pending.append((idx, task))
            while pending:
                second_look(*_popped(pending))
        finally:
            wait([fut for _, fut in pending])
        return

    seen = 0
    try:
        for (idx, digest, _), data in zip(rows, _chunk_data(session, sha256, rows, what), strict=False):
            seen += 1
            off = idx * chunk_size
            want = max(0, min(chunk_size, size - off))
            if not parallel:
                settle(idx, _check_chunk(data, idx, want, digest, off, place, hasher))
                continue
            while len(pending) >= limit:
                done_idx, fut = pending.popleft()
                settle(done_idx, fut.result())
            pending.append((idx, _pool().submit(_check_chunk, data, idx, want, digest, off, place, hasher)))
        while pending:
            done_idx, fut = pending.popleft()
            settle(done_idx, fut.result())
    finally:
        wait([fut for _, fut in pending])  # on a failure: in-flight copies finish before `buf` goes
    if seen != len(rows):
        raise CorruptDataError(f"{what}: blob {sha256[:16]} has {seen} of its {len(rows)} chunks")


def verify_blob(session: Session, sha256: str, *, what: str) -> int:
    """Check every chunk of blob `sha256` and its address without assembling it (one chunk in memory
    at a time); returns its size. Raises CorruptDataError naming `what`, as a read would."""
    size, chunk_size, rows, algorithm = _chunk_index(session, sha256, what)
    hasher = chunk_digester(algorithm)
    seen = 0
    for (idx, digest, _), data in zip(rows, _chunk_data(session, sha256, rows, what), strict=False):
        seen += 1
        want = max(0, min(chunk_size, size - idx * chunk_size))
        if len(data) != want or hasher(data) != digest:
            raise _failed(what, sha256, algorithm, idx)
    if seen != len(rows):
        raise CorruptDataError(f"{what}: blob {sha256[:16]} has {seen} of its {len(rows)} chunks")
    if blob_address(size, chunk_size, [r[1] for r in rows], algorithm) != sha256:
        raise _failed(what, sha256, algorithm)
    return size
