"""The digest chain over a session's snapshot index, checked before any snapshot is restored or forked.

Blob bytes verify themselves (memory/blob_read.py), but the small rows that say WHICH bytes make up a
turn do not: a flipped `snapshots.turn`, a row moved to another session, or a page row moved to
another turn would restore other (older) state without any byte failing its sha256. So each snapshot
row carries `digest`, a sha256 over everything that selects or describes its restorable state:

    the previous snapshot's digest (the chain's parent), session id, the session's model fingerprint
    and attention policy (its meta), turn, n_tokens, recurrent blob, the snapshot's meta (state
    layout, sampler) and the page list created at that turn [(token_start, token_end, blob)].

Chaining through the parent makes the digest of turn N cover every earlier row and page, and
`sessions.head_digest` anchors the newest one, so a deleted or renumbered latest row is caught too.

Rows written before the chain existed (schema revision 0003) have a NULL digest and are accepted
unchecked, as long as they come before every digested row of their session (a digested session never
gets unchecked rows later): such databases still open and resume, and each new turn extends the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hybrid_agent.memory.errors import CorruptDataError, InvalidMetaError
from hybrid_agent.memory.schema import Blob, FileChangeRow, SessionRow, SnapshotRow, StatePageRow
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

_TAG = "hybrid-agent/snapshot/v1"

PageKey = tuple[int, int, str]  # (token_start, token_end, blob sha256)


def _plain(value: Any) -> Any:
    """`value` as the JSON column hands it back (string keys, lists), so that the digest computed
    when a row is written equals the one computed from the row read back."""
    return json.loads(json.dumps(value))


def plain_json(value: Any, what: str) -> Any:
    """`_plain(value)` for a caller's value, checked before any transaction opens."""
    try:
        return _plain(value)
    except (TypeError, ValueError) as exc:
        raise InvalidMetaError(
            f"{what} must be plain JSON (str, int, float, bool, None, list, dict): {exc}"
        ) from None


def snapshot_digest(
    prev: str | None,
    *,
    session: SessionRow,
    turn: int,
    n_tokens: int,
    recurrent_blob: str,
    meta: dict[str, Any] | None,
    pages: list[PageKey],
) -> str:
    body = [
        _TAG,
        prev or "",
        session.id,
        session.model_fingerprint,
        _plain(session.meta or {}),
        int(turn),
        int(n_tokens),
        recurrent_blob,
        _plain(meta or {}),
        [[int(a), int(b), str(h)] for a, b, h in sorted(pages)],
    ]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    turn: int
    n_tokens: int
    recurrent_blob: str
    meta: dict[str, Any]
    digest: str | None
    pages: list[PageKey]


def _row_digest(prev: str | None, session: SessionRow, row: ChainRow) -> str:
    return snapshot_digest(
        prev,
        session=session,
        turn=row.turn,
        n_tokens=row.n_tokens,
        recurrent_blob=row.recurrent_blob,
        meta=row.meta,
        pages=row.pages,
    )


def chain_rows(s: Session, session_id: str) -> list[ChainRow]:
    """The session's snapshot rows, oldest first, each with the page rows stored under its turn."""
    pages: dict[int, list[PageKey]] = defaultdict(list)
    q = select(
        StatePageRow.turn, StatePageRow.token_start, StatePageRow.token_end, StatePageRow.blob_sha256
    ).where(StatePageRow.session_id == session_id)
    for turn, start, end, sha in s.execute(q):
        pages[turn].append((start, end, sha))
    snaps = s.execute(
        select(
            SnapshotRow.turn,
            SnapshotRow.n_tokens,
            SnapshotRow.recurrent_blob,
            SnapshotRow.meta,
            SnapshotRow.digest,
        )
        .where(SnapshotRow.session_id == session_id)
        .order_by(SnapshotRow.turn)
    )
    return [ChainRow(t, n, rb, dict(m or {}), d, sorted(pages.get(t, []))) for t, n, rb, m, d in snaps]


def damaged(session_id: str, turn: int, what: str, done: str = "nothing was loaded") -> CorruptDataError:
    return CorruptDataError(
        f"session {session_id} turn {turn}: {what} (the database was damaged or changed outside "
        f"hybrid-agent); {done}: `hybrid-agent sessions check {session_id[:8]}` lists the "
        "damage, and an earlier turn that checks out can still be forked"
    )


def verify_chain(s: Session, session: SessionRow, upto: int | None = None) -> list[ChainRow]:
    """Check the chain of `session`'s rows up to turn `upto` (all when None), and the head anchor when
    that includes the newest row. Returns the checked rows; raises CorruptDataError naming the turn."""
    rows = chain_rows(s, session.id)
    prev: str | None = None
    chained = False
    checked: list[ChainRow] = []
    for row in rows:
        if upto is not None and row.turn > upto:
            break
        if row.digest is None:
            if chained:
                raise damaged(session.id, row.turn, "its snapshot row has lost its digest")
        else:
            want = _row_digest(prev, session, row)
            if want != row.digest:
                raise damaged(session.id, row.turn, "its snapshot row or page list does not match its digest")
            chained = True
        prev = row.digest
        checked.append(row)
    if len(checked) == len(rows):  # the newest row is included: it must be the one saved last
        last = rows[-1].digest if rows else None
        if last != session.head_digest and (session.head_digest is not None or chained):
            turn = rows[-1].turn if rows else 0
            raise damaged(
                session.id, turn, "it is not the turn saved last (a snapshot row is missing or moved)"
            )
    return checked


def rechain(s: Session, session: SessionRow, rows: list[ChainRow]) -> str | None:
    """Write the digests of `session`'s copies of `rows` (a fork's) and its head; returns the head."""
    prev: str | None = None
    params = []
    for row in rows:
        prev = _row_digest(prev, session, row)
        params.append({"b_session": session.id, "b_turn": row.turn, "b_digest": prev})
    if params:
        table = SnapshotRow.__table__
        stmt = (
            update(table)
            .where(table.c.session_id == bindparam("b_session"), table.c.turn == bindparam("b_turn"))
            .values(digest=bindparam("b_digest"))
        )
        s.execute(stmt, params)
    session.head_digest = prev
    return prev


def missing_blobs(s: Session, session_id: str, rows: list[ChainRow]) -> list[str]:
    """Blobs that `rows` (and the session's file journal up to their last turn) point at but that are
    not in the database, each described with its session, turn and part."""
    wanted: dict[str, str] = {}
    for row in rows:
        where = f"session {session_id} turn {row.turn}"
        wanted.setdefault(row.recurrent_blob, f"{where}: recurrent state")
        for start, end, sha in row.pages:
            wanted.setdefault(sha, f"{where}: cache page [{start},{end})")
    if rows:
        fc = FileChangeRow
        q = select(fc.turn, fc.path, fc.before_blob, fc.after_blob).where(
            FileChangeRow.session_id == session_id, FileChangeRow.turn <= rows[-1].turn
        )
        for turn, path, before, after in s.execute(q):
            for sha in (before, after):
                if sha:
                    wanted.setdefault(sha, f"session {session_id} turn {turn}: file change {path}")
    shas = sorted(wanted)
    present: set[str] = set()
    for i in range(0, len(shas), 500):
        present.update(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas[i : i + 500]))))
    gone = [sha for sha in shas if sha not in present]
    return [f"{wanted[sha]}: blob {sha[:16]} is missing from the database" for sha in gone]
