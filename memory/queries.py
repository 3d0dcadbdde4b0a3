"""Small in-transaction helpers shared by the store's operations (each takes an open ORM Session)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hybrid_agent.memory.errors import SessionNotFoundError, TurnNotFoundError
from hybrid_agent.memory.records import SessionInfo
from hybrid_agent.memory.schema import Blob, SessionRow, SnapshotRow, StatePageRow
from sqlalchemy import func, insert, literal, select, union
from sqlalchemy.orm import Session


def now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def session_row(s: Session, session_id: str, *, share_lock: bool = False) -> SessionRow:
    """The session's row. `share_lock` (PostgreSQL): locked FOR SHARE until the transaction ends, so
    that no other transaction changes the session's turns meanwhile (they lock it FOR UPDATE, or
    delete it); SQLite's write transactions are serial already."""
    row = s.get(SessionRow, session_id, with_for_update={"read": True} if share_lock else None)
    if row is None:
        raise SessionNotFoundError(
            f"no session {session_id!r} in this database; `hybrid-agent sessions list` shows the ids"
        )
    return row


def snapshot_row(s: Session, session_id: str, turn: int | None) -> SnapshotRow:
    """The snapshot of `turn`, or the latest when None; TurnNotFoundError says which turns exist."""
    q = select(SnapshotRow).where(SnapshotRow.session_id == session_id)
    if turn is None:
        q = q.order_by(SnapshotRow.turn.desc()).limit(1)
    else:
        q = q.where(SnapshotRow.turn == turn)
    row = s.scalars(q).first()
    if row is None:
        saved = list(
            s.scalars(
                select(SnapshotRow.turn)
                .where(SnapshotRow.session_id == session_id)
                .order_by(SnapshotRow.turn)
            )
        )
        have = f"saved turns: {', '.join(map(str, saved[:20]))}" if saved else "nothing saved yet"
        if len(saved) > 20:
            have += f", ... {saved[-1]}"
        want = "no snapshot" if turn is None else f"no snapshot of turn {turn}"
        raise TurnNotFoundError(f"session {session_id} has {want} ({have})")
    return row


def session_info(s: Session, row: SessionRow) -> SessionInfo:
    latest = s.execute(
        select(SnapshotRow.turn, SnapshotRow.n_tokens)
        .where(SnapshotRow.session_id == row.id)
        .order_by(SnapshotRow.turn.desc())
        .limit(1)
    ).first()
    return SessionInfo(
        id=row.id,
        title=row.title,
        workspace=row.workspace,
        model_fingerprint=row.model_fingerprint,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        parent_id=row.parent_id,
        fork_turn=row.fork_turn,
        meta=dict(row.meta or {}),
        latest_turn=None if latest is None else latest.turn,
        n_tokens=0 if latest is None else latest.n_tokens,
    )


def copy_rows(s: Session, model: Any, cols: Sequence[str], src: str, dst: str, upto_turn: int) -> None:
    """INSERT ... SELECT the rows of session `src` with turn <= `upto_turn` as rows of `dst`, inside
    the database (no row travels through Python)."""
    table = model.__table__
    source = select(literal(dst), *(table.c[c] for c in cols)).where(
        table.c.session_id == src, table.c.turn <= upto_turn
    )
    s.execute(insert(table).from_select(["session_id", *cols], source))


def snapshot_bytes(s: Session, session_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Bytes of the snapshots each session uses: its recurrent-state blobs and its cache-page blobs,
    each distinct blob counted once per session. Forks share their parent's blobs, so the numbers of
    two sessions can overlap; a session with nothing saved is 0. `session_ids` None: every session."""
    used = union(
        select(SnapshotRow.session_id.label("session_id"), SnapshotRow.recurrent_blob.label("blob")),
        select(StatePageRow.session_id.label("session_id"), StatePageRow.blob_sha256.label("blob")),
    ).subquery()  # UNION, not UNION ALL: a blob two rows of one session share is counted once
    q = (
        select(used.c.session_id, func.coalesce(func.sum(Blob.size), 0))
        .join(Blob, Blob.sha256 == used.c.blob)
        .group_by(used.c.session_id)
    )
    if session_ids is not None:
        q = q.where(used.c.session_id.in_(list(session_ids)))
    found = {str(sid): int(total) for sid, total in s.execute(q)}
    wanted = session_ids if session_ids is not None else s.scalars(select(SessionRow.id))
    return {sid: found.get(sid, 0) for sid in wanted}
