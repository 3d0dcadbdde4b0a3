"""Saving and loading one turn's snapshot, inside a transaction the Store opens.

`prepare_turn` does the CPU work (validation, safetensors, hashing) before any lock is taken;
`write_turn` only inserts. `read_snapshot` reads and verifies every byte (memory/blob_read.py's pipeline,
straight into one buffer per blob on the target device) before building tensors, which are views of
those buffers (memory/codec.py's `tensors_from_buffer`): no further copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hybrid_agent.memory import blob_read, blobs
from hybrid_agent.memory.codec import tensors_from_buffer, tensors_to_bytes
from hybrid_agent.memory.errors import (
    FingerprintMismatchError,
    InvalidEventError,
    InvalidPageError,
    TurnOrderError,
)
from hybrid_agent.memory.integrity import damaged, plain_json, snapshot_digest, verify_chain
from hybrid_agent.memory.queries import now, session_row, snapshot_row
from hybrid_agent.memory.records import Event, FileEdit, PageParts, SaveStats, Snapshot
from hybrid_agent.memory.schema import EVENT_KINDS, EventRow, FileChangeRow, SnapshotRow, StatePageRow
from hybrid_agent.memory.sqlite_chunks import chunk_readers
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session


def event_of(item: Event | Mapping[str, Any]) -> Event:
    ev = item if isinstance(item, Event) else Event(**dict(item))
    if ev.kind not in EVENT_KINDS:
        raise InvalidEventError(f"event kind {ev.kind!r} is not one of {', '.join(EVENT_KINDS)}")
    return ev


@dataclass(frozen=True)
class PreparedTurn:
    turn: int
    n_tokens: int
    meta: dict[str, Any]
    events: list[Event]
    recurrent: blobs.PreparedBlob
    pages: list[tuple[PageParts, blobs.PreparedBlob]]
    edits: list[tuple[FileEdit, blobs.PreparedBlob | None, blobs.PreparedBlob | None]]


def _prepare_optional(data: bytes | None) -> blobs.PreparedBlob | None:
    return None if data is None else blobs.prepare_blob(bytes(data))


def prepare_turn(
    turn: int,
    *,
    events: Iterable[Event | Mapping[str, Any]],
    recurrent: Mapping[str, torch.Tensor],
    pages: Sequence[PageParts],
    n_tokens: int,
    meta: dict[str, Any] | None,
    file_changes: Sequence[FileEdit],
) -> PreparedTurn:
    evs = [event_of(e) for e in events]
    ordered: list[PageParts] = sorted(((int(a), int(b), dict(t)) for a, b, t in pages), key=lambda p: p[0])
    for (a0, a1, _), (b0, b1, _) in itertools.pairwise(ordered):
        if b0 < a1:
            raise InvalidPageError(f"pages [{a0},{a1}) and [{b0},{b1}) overlap")
    for start, end, _ in ordered:
        if not 0 <= start < end <= n_tokens:
            raise InvalidPageError(f"page [{start},{end}) is empty or beyond n_tokens={n_tokens}")
    return PreparedTurn(
        turn=turn,
        n_tokens=n_tokens,
        meta=plain_json(meta or {}, "the snapshot's meta"),
        events=evs,
        recurrent=blobs.prepare_blob(tensors_to_bytes(recurrent)),
        pages=[(p, blobs.prepare_blob(tensors_to_bytes(p[2]))) for p in ordered],
        edits=[(e, _prepare_optional(e.before), _prepare_optional(e.after)) for e in file_changes],
    )


def write_turn(s: Session, session_id: str, t: PreparedTurn) -> SaveStats:
    """Insert a prepared turn. Reads only the session's last turn and last page end (index lookups),
    so the cost does not grow with the length of the session."""
    row = session_row(s, session_id)
    newest = s.execute(
        select(SnapshotRow.turn, SnapshotRow.digest)
        .where(SnapshotRow.session_id == session_id)
        .order_by(SnapshotRow.turn.desc())
        .limit(1)
    ).first()
    last, prev_digest = (None, None) if newest is None else (newest.turn, newest.digest)
    if prev_digest != row.head_digest:  # the chain would be extended from a row that was not saved last
        raise damaged(
            session_id, t.turn if last is None else last, "it is not the turn saved last", "nothing was saved"
        )
    if last is not None and t.turn <= last:
        raise TurnOrderError(
            f"session {session_id} already has turn {last}; save turn {last + 1} or later, "
            "or fork the session to rewrite its history"
        )
    end = s.scalar(select(func.max(StatePageRow.token_end)).where(StatePageRow.session_id == session_id))
    if t.pages and end is not None and t.pages[0][0][0] < end:
        raise InvalidPageError(
            f"session {session_id}: the new page at token {t.pages[0][0][0]} overlaps saved pages "
            f"(they end at {end}); pages are append-only: save only the tokens from {end} on"
        )
    written = dedup = 0
    edit_blobs = [b for _, before, after in t.edits for b in (before, after) if b is not None]
    every = [t.recurrent, *(b for _, b in t.pages), *edit_blobs]
    fresh = blobs.write_blobs(s, every)
    for blob in every:  # bytes repeated within the turn are written once
        if blob.sha256 in fresh:
            fresh.discard(blob.sha256)
            written += blob.size
        else:
            dedup += blob.size
    stamp = now()
    row.head_digest = snapshot_digest(
        prev_digest,
        session=row,
        turn=t.turn,
        n_tokens=t.n_tokens,
        recurrent_blob=t.recurrent.sha256,
        meta=t.meta,
        pages=[(p[0], p[1], b.sha256) for p, b in t.pages],
    )
    s.add(
        SnapshotRow(
            session_id=session_id,
            turn=t.turn,
            n_tokens=t.n_tokens,
            recurrent_blob=t.recurrent.sha256,
            meta=t.meta,
            created_at=stamp,
            digest=row.head_digest,
        )
    )
    for page, blob in t.pages:
        s.add(
            StatePageRow(
                session_id=session_id,
                turn=t.turn,
                token_start=page[0],
                token_end=page[1],
                blob_sha256=blob.sha256,
            )
        )
    for seq, ev in enumerate(t.events):
        s.add(
            EventRow(
                session_id=session_id,
                turn=t.turn,
                seq=seq,
                kind=ev.kind,
                content=ev.content,
                data=ev.data,
                created_at=stamp,
            )
        )
    for edit, before, after in t.edits:
        s.add(
            FileChangeRow(
                session_id=session_id,
                turn=t.turn,
                path=edit.path,
                before_blob=before and before.sha256,
                after_blob=after and after.sha256,
                created_at=stamp,
                reverted=False,
            )
        )
    row.updated_at = stamp
    return SaveStats(turn=t.turn, bytes_written=written, bytes_deduplicated=dedup, pages=len(t.pages))


def _page_rows(s: Session, snap: SnapshotRow, *, window: int | None, sinks: int) -> list[StatePageRow]:
    """The page rows a load of `snap` reads, by token: with a window only those overlapping
    [0, sinks) or [n_tokens - window, n_tokens)."""
    q = select(StatePageRow).where(StatePageRow.session_id == snap.session_id, StatePageRow.turn <= snap.turn)
    if window is not None:
        recent = StatePageRow.token_end > snap.n_tokens - window
        q = q.where(or_(recent, StatePageRow.token_start < sinks) if sinks > 0 else recent)
    return list(s.scalars(q.order_by(StatePageRow.token_start)))


def snapshot_blobs(
    s: Session, session_id: str, turn: int | None, *, window: int | None, sinks: int
) -> list[str]:
    """The sha256 of each blob `read_snapshot` reads, in its order: the recurrent state, then the pages
    by token (the chain is not verified: for tools that time or inspect the load path)."""
    snap = snapshot_row(s, session_id, turn)
    return [snap.recurrent_blob, *(p.blob_sha256 for p in _page_rows(s, snap, window=window, sinks=sinks))]


def read_snapshot(
    s: Session,
    session_id: str,
    turn: int | None,
    *,
    window: int | None,
    sinks: int,
    fingerprint: str | None,
    device: torch.device | str | None = None,
) -> Snapshot:
    sess = session_row(s, session_id)
    if fingerprint is not None and fingerprint != sess.model_fingerprint:
        raise FingerprintMismatchError(
            f"session {session_id} was saved by model {sess.model_fingerprint}, but the model loaded now "
            f"is {fingerprint}; load the model it was made with, or start a new session"
        )
    snap = snapshot_row(s, session_id, turn)
    verify_chain(s, sess, snap.turn)  # the rows that select the bytes below are what was saved
    where = f"session {session_id} turn {snap.turn}"
    page_rows = _page_rows(s, snap, window=window, sinks=sinks)
    # Every byte is read and verified (into fresh buffers on `device`) before any tensor is built.
    rec_label = f"{where}: recurrent state"
    labels = [f"{where}: cache page [{p.token_start},{p.token_end})" for p in page_rows]
    with chunk_readers(s) as readers:
        rec_buf = blob_read.read_blob_tensor(
            s, snap.recurrent_blob, what=rec_label, device=device, readers=readers
        )
        page_bufs = [
            blob_read.read_blob_tensor(s, p.blob_sha256, what=w, device=device, readers=readers)
            for p, w in zip(page_rows, labels, strict=True)
        ]
    pages = [
        (p.token_start, p.token_end, tensors_from_buffer(b, what=w))
        for p, b, w in zip(page_rows, page_bufs, labels, strict=True)
    ]
    return Snapshot(
        session_id=session_id,
        turn=snap.turn,
        n_tokens=snap.n_tokens,
        recurrent=tensors_from_buffer(rec_buf, what=rec_label),
        pages=pages,
        meta=dict(snap.meta or {}),
    )


def append_events(s: Session, session_id: str, turn: int, events: Sequence[Event]) -> int:
    """Insert `events` after the events of `turn` (0: before the first snapshot); no snapshot is
    written and the digest chain (which covers snapshots, not events) is unchanged. Returns how many."""
    session_row(s, session_id)
    last = s.scalar(
        select(func.max(EventRow.seq)).where(EventRow.session_id == session_id, EventRow.turn == turn)
    )
    stamp = now()
    start = 0 if last is None else last + 1
    for seq, ev in enumerate(events, start):
        s.add(
            EventRow(
                session_id=session_id, turn=turn, seq=seq, kind=ev.kind, content=ev.content,
                data=ev.data, created_at=stamp,
            )
        )  # fmt: skip
    return len(events)
