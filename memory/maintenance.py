"""Whole-database upkeep: the full check behind `hybrid-agent sessions check` and the compaction
behind `hybrid-agent sessions gc`. Each runs inside a transaction (or, for VACUUM, a connection) that
memory/store.py opens."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from hybrid_agent.memory import blob_read, blobs
from hybrid_agent.memory.errors import StoreError
from hybrid_agent.memory.integrity import chain_rows, missing_blobs, verify_chain
from hybrid_agent.memory.queries import now, session_row, snapshot_row
from hybrid_agent.memory.schema import Blob, EventRow, FileChangeRow, SessionRow, SnapshotRow, StatePageRow
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class CheckReport:
    """What `Store.check` looked at, and every problem it found (one line each)."""

    sessions: int
    turns: int
    blobs: int
    bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _file_problems(s: Session) -> list[str]:
    """SQLite's full `PRAGMA integrity_check` (every page, every index against its table)."""
    try:
        found = [str(r[0]) for r in s.connection().exec_driver_sql("PRAGMA integrity_check(100)")]
    except DBAPIError as exc:
        return [f"the database file: {exc.orig}"]
    return [] if found == ["ok"] else [f"the database file: {line}" for line in found]


def _problem(what: str, exc: Exception) -> str:
    if isinstance(exc, StoreError):
        return str(exc)
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{what}: cannot be read ({' '.join(str(reason).split())[:200]})"


def session_blobs(s: Session, session_id: str) -> set[str]:
    """The digests of every blob `session_id`'s rows reference (state, pages, file contents)."""
    found: set[str] = set()
    for col in (
        SnapshotRow.recurrent_blob,
        StatePageRow.blob_sha256,
        FileChangeRow.before_blob,
        FileChangeRow.after_blob,
    ):
        found.update(sha for sha in s.scalars(select(col).where(col.class_.session_id == session_id)) if sha)
    return found


def check(s: Session, session_id: str | None) -> CheckReport:
    """Verify the database file (SQLite), the digest chain of each session (or of `session_id`) and
    every byte of every blob (or of those that session uses)."""
    problems = _file_problems(s) if s.get_bind().dialect.name == "sqlite" else []
    q = select(SessionRow).order_by(SessionRow.id)
    if session_id is not None:
        q = q.where(SessionRow.id == session_id)
    sessions = list(s.scalars(q))
    turns = 0
    for sess in sessions:
        try:
            rows = chain_rows(s, sess.id)
            turns += len(rows)
            verify_chain(s, sess)
        except (StoreError, ValueError, TypeError, DBAPIError) as exc:
            problems.append(_problem(f"session {sess.id}", exc))
            continue
        problems.extend(missing_blobs(s, sess.id, rows))
    if session_id is None:
        shas = sorted(s.scalars(select(Blob.sha256)))
    else:
        stored = set(s.scalars(select(Blob.sha256)))
        shas = sorted(session_blobs(s, session_id) & stored)  # missing ones are reported above
    total = 0
    for sha in shas:
        try:
            total += blob_read.verify_blob(s, sha, what=f"blob {sha[:16]}")
        except (StoreError, ValueError, TypeError, DBAPIError) as exc:
            problems.append(_problem(f"blob {sha[:16]}", exc))
    return CheckReport(len(sessions), turns, len(shas), total, problems)


def vacuum_sqlite(engine: Engine) -> None:
    """Give the free pages of an SQLite file back to the file system. A file made with
    auto_vacuum=INCREMENTAL (memory/database.py) only moves its free pages to the end; an older one is
    rewritten once by VACUUM, switching it to incremental for next time. The file itself shrinks at
    the next checkpoint (WAL mode). Raised as SQLAlchemy's error so that `retry_busy` retries it."""
    raw = engine.raw_connection()  # autocommit: VACUUM cannot run inside a transaction
    try:
        cursor = raw.cursor()
        try:
            if cursor.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # executescript steps the statement to its end (execute frees one page per call)
                cursor.executescript("PRAGMA incremental_vacuum;")
            else:
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
                cursor.execute("VACUUM")
        except sqlite3.Error as exc:
            raise OperationalError("VACUUM", None, exc) from exc
        cursor.close()
    finally:
        raw.close()


def vacuum_postgresql(engine: Engine) -> None:
    """PostgreSQL: mark the deleted blob rows' space reusable (a plain VACUUM: it takes no lock that
    blocks readers or writers; VACUUM FULL would, so it is left to the administrator)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM blob_chunks, blobs")


def truncate_session(s: Session, session_id: str, turn: int) -> int:
    """Drop every row of `session_id` after `turn` (events, snapshots, pages, file-journal entries), in
    place: the session ends at `turn` again, its chain head moved back to that turn's digest (the rows
    kept are checked first). Returns the number of blobs freed. Its forks keep their own rows."""
    row = session_row(s, session_id)
    if turn:
        snapshot_row(s, session_id, turn)  # refuses a turn the session does not have
    kept = verify_chain(s, row, turn)
    used = session_blobs(s, session_id)
    for table in (EventRow, SnapshotRow, StatePageRow, FileChangeRow):
        s.execute(delete(table).where(table.session_id == session_id, table.turn > turn))
    row.head_digest = kept[-1].digest if kept else None
    row.updated_at = now()
    s.flush()
    return blobs.delete_unreferenced(s, used)
