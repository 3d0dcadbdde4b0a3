"""Retention of the saved prefix states of `hybrid-agent serve` (memory/prefixes.py): a bound on their
bytes, least recently used out first, and a time to live.

Design choices:
- A prefix is used when it is saved, found by a lookup, or restored from a server's memory tier
  (agent/serve_prefix.py touches it): `prefix_states.last_used_at`.
- The bytes of the saved prefix states are those of every distinct blob that the snapshot and page rows
  of the prefix sessions reference. A blob that an agent session or another prefix shares (blobs are
  content-addressed) counts, and is deleted only once no row references it
  (memory/blobs.py `delete_unreferenced`).
- Evicting a prefix deletes its row; a turn of its session that no prefix names any more goes with it,
  in the same transaction: turns after the last named one are cut off, a turn between named ones is
  merged into the next named turn (its cache pages move there, the later turns read them as before;
  its recurrent state goes) and the session's digest chain (memory/integrity.py) is written again,
  after the old one was checked. A session no prefix names is deleted whole; a damaged one too.
- Several servers may share the database: each session row is locked while its turns change (as
  memory/prefixes.py does when it appends), and a state that another server evicted is just not found
  (that server prefills again; one still holding it in its memory tier keeps using it). A blob that
  another server's save reuses while it is evicted here is locked by that save (memory/blobs.py
  `write_blobs`): the eviction waits and keeps it, or deletes it first and the save stores it again;
  neither transaction fails nor is rolled back. A save that forks a prefix session locks its row for
  share (memory/store.py `fork_session`), so the fork copies all of its rows before an eviction changes
  them, or finds the session gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from hybrid_agent.memory import blobs
from hybrid_agent.memory.errors import CorruptDataError
from hybrid_agent.memory.integrity import chain_rows, rechain, verify_chain
from hybrid_agent.memory.maintenance import session_blobs
from hybrid_agent.memory.queries import now
from hybrid_agent.memory.schema import (
    Blob,
    EventRow,
    FileChangeRow,
    PrefixRow,
    SessionRow,
    SnapshotRow,
    StatePageRow,
)
from sqlalchemy import delete, func, select, union, update
from sqlalchemy.orm import Session

_BATCH = 500  # digests in one IN list and one eviction transaction


@dataclass(frozen=True)
class RetentionStats:
    evicted: int  # prefix states deleted
    blobs_freed: int
    bytes_after: int  # bytes of the saved prefix states left


def _last_used() -> object:
    return func.coalesce(PrefixRow.last_used_at, PrefixRow.created_at)


def prefix_bytes(s: Session) -> int:
    """Bytes of every distinct blob the prefix sessions' snapshots and cache pages reference."""
    sessions = select(PrefixRow.session_id).distinct()
    shas = union(
        select(SnapshotRow.recurrent_blob).where(SnapshotRow.session_id.in_(sessions)),
        select(StatePageRow.blob_sha256).where(StatePageRow.session_id.in_(sessions)),
    )
    return int(s.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(shas))) or 0)


def touch(s: Session, digests: Sequence[str]) -> None:
    """Mark prefixes used now (a digest no longer stored is skipped)."""
    stamp = now()
    for i in range(0, len(digests), _BATCH):
        batch = list(digests[i : i + _BATCH])
        s.execute(update(PrefixRow).where(PrefixRow.digest.in_(batch)).values(last_used_at=stamp))


def _lru(s: Session) -> list[tuple[str, int]]:
    """Every prefix, least recently used first, with the bytes it alone would free at most (its
    recurrent state and the cache pages its turn added)."""
    pages = dict(
        ((sid, turn), int(size))
        for sid, turn, size in s.execute(
            select(StatePageRow.session_id, StatePageRow.turn, func.sum(Blob.size))
            .join(Blob, Blob.sha256 == StatePageRow.blob_sha256)
            .where(StatePageRow.session_id.in_(select(PrefixRow.session_id).distinct()))
            .group_by(StatePageRow.session_id, StatePageRow.turn)
        )
    )
    q = (
        select(PrefixRow.digest, PrefixRow.session_id, PrefixRow.turn, Blob.size)
        .join(
            SnapshotRow,
            (SnapshotRow.session_id == PrefixRow.session_id) & (SnapshotRow.turn == PrefixRow.turn),
            isouter=True,
        )
        .join(Blob, Blob.sha256 == SnapshotRow.recurrent_blob, isouter=True)
        .order_by(_last_used(), PrefixRow.n_tokens)
    )
    return [(d, int(size or 0) + pages.get((sid, turn), 0)) for d, sid, turn, size in s.execute(q)]


def _drop_session(s: Session, session_id: str) -> None:
    for table in (PrefixRow, EventRow, SnapshotRow, StatePageRow, FileChangeRow):
        s.execute(delete(table).where(table.session_id == session_id))
    s.execute(update(SessionRow).where(SessionRow.parent_id == session_id).values(parent_id=None))
    s.execute(delete(SessionRow).where(SessionRow.id == session_id))


def _keep_named_turns(s: Session, session_id: str) -> None:
    """Cut the session down to the turns a prefix still names (see the module doc)."""
    row = s.scalars(select(SessionRow).where(SessionRow.id == session_id).with_for_update()).first()
    if row is None:
        return
    named = sorted(set(s.scalars(select(PrefixRow.turn).where(PrefixRow.session_id == session_id))))
    try:
        verify_chain(s, row)
    except CorruptDataError:  # nothing in it can be restored anyway
        named = []
    if not named:
        _drop_session(s, session_id)
        return
    turns = list(s.scalars(select(SnapshotRow.turn).where(SnapshotRow.session_id == session_id)))
    last = named[-1]
    gone = [t for t in turns if t not in named]
    if not gone:
        return
    for table in (EventRow, SnapshotRow, StatePageRow, FileChangeRow):
        s.execute(delete(table).where(table.session_id == session_id, table.turn > last))
    for t in (t for t in gone if t < last):
        into = next(k for k in named if k > t)
        for table in (StatePageRow, EventRow, FileChangeRow):
            s.execute(update(table).where(table.session_id == session_id, table.turn == t).values(turn=into))
        s.execute(delete(SnapshotRow).where(SnapshotRow.session_id == session_id, SnapshotRow.turn == t))
    s.flush()
    rechain(s, row, chain_rows(s, session_id))
    row.updated_at = now()


def evict(s: Session, digests: Sequence[str]) -> int:
    """Delete these prefixes and whatever only they kept (see the module doc); the blobs freed."""
    sessions = sorted(set(s.scalars(select(PrefixRow.session_id).where(PrefixRow.digest.in_(list(digests))))))
    used: set[str] = set()
    for sid in sessions:  # locked in one order, so two servers evicting at once cannot deadlock
        s.scalars(select(SessionRow.id).where(SessionRow.id == sid).with_for_update()).first()
        used |= session_blobs(s, sid)
    s.execute(delete(PrefixRow).where(PrefixRow.digest.in_(list(digests))))
    for sid in sessions:
        _keep_named_turns(s, sid)
    return blobs.delete_unreferenced(s, used)


def sweep_orphans(s: Session, title: str, older_than: timedelta) -> int:
    """Delete prefix sessions (titled `title`) that no prefix names and that nothing changed for
    `older_than` (one whose first turn lost the race for its digest to another server, or a process
    that stopped between creating it and saving its turn); the blobs freed."""
    named = select(PrefixRow.session_id).where(PrefixRow.session_id == SessionRow.id).exists()
    ids = list(
        s.scalars(
            select(SessionRow.id).where(
                SessionRow.title == title, SessionRow.updated_at < now() - older_than, ~named
            )
        )
    )
    used: set[str] = set()
    for sid in ids:
        used |= session_blobs(s, sid)
        _drop_session(s, sid)
    return blobs.delete_unreferenced(s, used) if ids else 0


def expired(s: Session, ttl: timedelta) -> list[str]:
    """The prefixes not used for `ttl`."""
    cutoff: datetime = now() - ttl
    return list(s.scalars(select(PrefixRow.digest).where(_last_used() < cutoff)))


def over_budget(s: Session, max_bytes: int) -> tuple[list[str], int]:
    """The least recently used prefixes whose bytes, evicted, bring the total to `max_bytes` or under
    (an estimate: bytes shared between turns or sessions may free less; the caller measures again),
    and the total now."""
    total = prefix_bytes(s)
    excess = total - max_bytes
    if excess <= 0:
        return [], total
    out, freed = [], 0
    for digest, size in _lru(s):
        out.append(digest)
        freed += size
        if freed >= excess:
            break
    return out, total
