"""`Store`: sessions, per-turn snapshots with append-only cache pages, forks, and the file journal.

Every public method is one database transaction, retried as a whole while the database is busy.
Serialisation and hashing happen before a write transaction opens, so the write lock is held only for
the inserts. A load reads and verifies every byte into fresh tensors before it returns: a caller swaps
them in only on success, so a failed load leaves its live state as it was.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from hybrid_agent.memory import blobs, database
from hybrid_agent.memory.database import (
    WRITE_OPTION,
    create_store_engine,
    migrate,
    normalize_url,
    require_head,
    retry_busy,
    translate,
    unreadable_as_damage,
)
from hybrid_agent.memory.errors import CorruptDataError, DatabaseUnavailableError, StoreError
from hybrid_agent.memory.file_journal import FileJournalOps
from hybrid_agent.memory.integrity import missing_blobs, plain_json, rechain, verify_chain
from hybrid_agent.memory.maintenance import (
    CheckReport,
    check,
    session_blobs,
    truncate_session,
    vacuum_postgresql,
    vacuum_sqlite,
)
from hybrid_agent.memory.open_check import OpenCheck
from hybrid_agent.memory.queries import (
    copy_rows,
    now,
    session_info,
    session_row,
    snapshot_bytes,
    snapshot_row,
    utc,
)
from hybrid_agent.memory.records import (
    CompactStats,
    Event,
    FileEdit,
    PageParts,
    SaveStats,
    SessionInfo,
    Snapshot,
    TurnInfo,
)
from hybrid_agent.memory.schema import EventRow, FileChangeRow, SessionRow, SnapshotRow, StatePageRow
from hybrid_agent.memory.turns import append_events, event_of, prepare_turn, read_snapshot, write_turn
from hybrid_agent.memory.wal import WalCheckpointer
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

# Per table, the columns a fork copies (besides session_id): the rows are small, the bytes are shared.
_FORK_COPIES: list[tuple[Any, tuple[str, ...]]] = [
    (EventRow, ("turn", "seq", "kind", "content", "data", "created_at")),
    (SnapshotRow, ("turn", "n_tokens", "recurrent_blob", "meta", "created_at")),
    (StatePageRow, ("turn", "token_start", "token_end", "blob_sha256")),
    (FileChangeRow, ("turn", "path", "before_blob", "after_blob", "created_at", "reverted")),
]


class Store(FileJournalOps):
    """The session database. `Store(url=None)`: None = the default SQLite file under the user's data
    directory; a path = an SQLite file; otherwise any SQLAlchemy URL (PostgreSQL is tested)."""

    def __init__(self, url: str | Path | None = None, *, read_only: bool = False) -> None:
        """`read_only`, or an SQLite file this process may not write: opened with SQLite's read-only
        flag; reads work, every write raises a one-line error. An SQLite file that fails `PRAGMA
        quick_check` is opened that way too, so that nothing new is saved into a file that may be lost.
        The check of a file already at this version's schema runs beside the open (memory/open_check.py):
        reads start at once, through a read-only connection; the first write waits for the verdict."""
        self.url = normalize_url(url)
        self._where = self.url.render_as_string(hide_password=True)
        self._path = path = database.sqlite_file(self.url)
        exists = path is not None and path.is_file() and path.stat().st_size > 0
        if path is not None and exists and not os.access(path, os.W_OK):
            read_only = True
        # Why writes are refused, or None: the store is writable (see `refusal`).
        self._refusal: StoreError | None = None
        if read_only:
            self._refusal = DatabaseUnavailableError(
                f"{self._where} is open read-only: sessions can be listed, shown, exported and checked "
                "but nothing can be saved, forked or removed; make the file writable, or pass another --db"
            )
        # An existing file is checked through a read-only connection: a damaged one stays untouched
        # (even the close of a writable connection can write to the file's header).
        self._engine: Engine = create_store_engine(self.url, read_only=read_only or exists)
        self._checkpointer: WalCheckpointer | None = None
        self._pending: OpenCheck | None = None  # the open check still running
        self._settle_lock = threading.Lock()
        try:
            if exists and not read_only and database.at_head(self._engine):  # the usual case
                self._pending = OpenCheck(self._engine, "checking the database")
            else:
                if exists:
                    damage = self._run(lambda: database.sqlite_damage(self._engine), "checking the database")
                    self._note_damage(damage)
                if self._refusal is None:
                    self._open_writable(reopen=exists)
                else:
                    why = self._refusal
                    self._run(lambda: require_head(self._engine, self._where, why), "opening the database")
        except BaseException:
            self._engine.dispose()
            raise
        self._sessions()

    def _note_damage(self, damage: str | None) -> None:
        if damage is not None:
            self._refusal = CorruptDataError(
                f"{self._where} is damaged (SQLite quick_check: {' '.join(damage.split())[:300]}); "
                "it is open read-only so that nothing new is lost with it: export what you need "
                "(`hybrid-agent sessions export ID`), then restore a backup or salvage it with "
                "`sqlite3 FILE .recover`; `hybrid-agent sessions check` shows the details"
            )

    def _open_writable(self, *, reopen: bool) -> None:
        if reopen:  # intact: reopen it for writing (connections still reading close when returned)
            self._engine.dispose()
            self._engine = create_store_engine(self.url)
        self._run(lambda: migrate(self._engine, self._where), "opening the database")
        if self._path is not None:
            self._checkpointer = WalCheckpointer(self._path, database.BUSY_TIMEOUT_S)

    def _sessions(self) -> None:
        # PostgreSQL defaults to READ COMMITTED: a load spans several statements and must not see a
        # concurrent delete halfway. SQLite read transactions are snapshots already.
        reader = self._engine
        if self._engine.dialect.name == "postgresql":
            reader = self._engine.execution_options(isolation_level="REPEATABLE READ")
        self._read = sessionmaker(reader, expire_on_commit=False)
        self._write = sessionmaker(
            self._engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    def _settle(self) -> None:
        """Wait for a running open check's verdict: then refuse writes, or open the file for writing."""
        if self._pending is None:
            return
        with self._settle_lock:
            pending = self._pending
            if pending is None:
                return
            try:
                damage = pending.result()
            except DBAPIError as exc:
                translated = translate(exc, self._where)
                if translated is exc:
                    raise
                raise translated from exc
            self._pending = None
            self._note_damage(damage)
            if self._refusal is None:
                self._open_writable(reopen=True)
                self._sessions()

    @property
    def refusal(self) -> StoreError | None:
        """Why writes are refused (None: writable); waits for the open check's verdict."""
        self._settle()
        return self._refusal

    # -- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        pending = self._pending
        if pending is not None:
            pending.cancel()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._engine.dispose()  # SQLite checkpoints the log when its last connection closes

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database file now and truncate it (normally a
        background thread does this after each write). Other backends: nothing to do."""
        self._refuse_writes()
        if self._checkpointer is not None:
            self._run(self._checkpointer.run_now, "checkpointing the database")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, fn: Callable[[], T], what: str) -> T:
        try:
            return retry_busy(fn, what)
        except DBAPIError as exc:
            translated = translate(exc, self._where)
            if translated is exc:
                raise
            raise translated from exc

    def _in_read(self, fn: Callable[[Session], T], what: str) -> T:
        def attempt() -> T:
            # Ended by a rollback, not a commit: the same for a reader, and on a damaged file a COMMIT
            # after a failed page read raises again, losing what the reader had found.
            with self._read() as s:
                s.begin()
                try:
                    return unreadable_as_damage(fn, s, what, self._where)
                finally:
                    s.rollback()

        return self._run(attempt, what)

    def _refuse_writes(self) -> None:
        if self.refusal is not None:
            raise type(self.refusal)(str(self.refusal))

    def _in_write(self, fn: Callable[[Session], T], what: str) -> T:
        self._refuse_writes()

        def attempt() -> T:
            with self._write() as s, s.begin():
                return unreadable_as_damage(fn, s, what, self._where)

        result = self._run(attempt, what)
        if self._checkpointer is not None:
            self._checkpointer.poke()
        return result

    # -- sessions ---------------------------------------------------------------------------------

    def create_session(
        self,
        title: str,
        workspace: str,
        model_fingerprint: str,
        meta: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        events: Sequence[Event] = (),
    ) -> SessionInfo:
        """A new session; its id is `session_id` when given (an id chosen before the row is written).
        `events` (an imported conversation, no state) are stored under turn 0, in one transaction."""
        given = [event_of(e) for e in events]

        def do(s: Session) -> SessionInfo:
            stamp = now()
            row = SessionRow(
                id=session_id or str(uuid.uuid4()),
                title=title,
                workspace=str(workspace),
                model_fingerprint=model_fingerprint,
                created_at=stamp,
                updated_at=stamp,
                parent_id=None,
                fork_turn=None,
                meta=dict(meta or {}),
            )
            s.add(row)
            s.flush()
            for seq, ev in enumerate(given):
                data = None if ev.data is None else plain_json(ev.data, "an event's data")
                s.add(EventRow(session_id=row.id, turn=0, seq=seq, kind=ev.kind, content=ev.content,
                               data=data, created_at=ev.created_at or stamp))  # fmt: skip
            return session_info(s, row)

        return self._in_write(do, "creating a session")

    def get_session(self, session_id: str) -> SessionInfo:
        return self._in_read(lambda s: session_info(s, session_row(s, session_id)), "reading a session")

    def list_sessions(self, *, hidden: bool = False) -> list[SessionInfo]:
        """All sessions, most recently updated first; those whose meta has `"hidden": true` (states the
        agent keeps for itself, not conversations) only with `hidden=True`, and then only they."""

        def do(s: Session) -> list[SessionInfo]:
            rows = s.scalars(select(SessionRow).order_by(SessionRow.updated_at.desc(), SessionRow.id))
            return [session_info(s, r) for r in rows if bool((r.meta or {}).get("hidden")) == hidden]

        return self._in_read(do, "listing sessions")

    def rename_session(self, session_id: str, title: str) -> SessionInfo:
        def do(s: Session) -> SessionInfo:
            row = session_row(s, session_id)
            row.title = title
            row.updated_at = now()
            s.flush()
            return session_info(s, row)

        return self._in_write(do, "renaming a session")

    def move_session(self, session_id: str, workspace: str) -> SessionInfo:
        """Record that the session now works on another folder (its project was moved or copied)."""

        def do(s: Session) -> SessionInfo:
            row = session_row(s, session_id)
            row.workspace = str(workspace)
            row.updated_at = now()
            s.flush()
            return session_info(s, row)

        return self._in_write(do, "moving a session")

    def delete_session(self, session_id: str) -> int:
        """Delete a session and every blob only it used; returns the number of blobs freed.
        Its forks keep working: they hold their own references to the blobs they share."""

        def do(s: Session) -> int:
            session_row(s, session_id)
            used = session_blobs(s, session_id)
            for table in (EventRow, SnapshotRow, StatePageRow, FileChangeRow):
                s.execute(delete(table).where(table.session_id == session_id))
            s.execute(update(SessionRow).where(SessionRow.parent_id == session_id).values(parent_id=None))
            s.execute(delete(SessionRow).where(SessionRow.id == session_id))
            return blobs.delete_unreferenced(s, used)

        return self._in_write(do, "deleting a session")

    def fork_session(self, session_id: str, turn: int, *, title: str | None = None) -> SessionInfo:
        """A new session whose history is `session_id` up to and including `turn`. Copies the small
        rows (events, snapshots, page index, journal) inside the database; state bytes are shared."""

        def do(s: Session) -> SessionInfo:
            # Locked: the rows below are read and copied by several statements, each seeing what was
            # committed last on PostgreSQL, and an eviction (memory/prefix_retention.py) or a delete
            # committed in between would leave the fork a part of them.
            parent = session_row(s, session_id, share_lock=True)
            snapshot_row(s, session_id, turn)
            # Checked before anything is copied: a fork of damaged rows would carry the damage into a
            # session with a fresh, valid chain; a missing blob would fail a foreign key halfway.
            rows = verify_chain(s, parent, turn)
            missing = missing_blobs(s, session_id, rows)
            if missing:
                raise CorruptDataError(
                    f"{missing[0]}; session {session_id} cannot be forked at turn {turn} "
                    f"({len(missing)} missing): fork at an earlier turn, or see "
                    f"`hybrid-agent sessions check {session_id[:8]}`"
                )
            stamp = now()
            name = title if title is not None else f"{parent.title} (fork at turn {turn})"
            child = SessionRow(
                id=str(uuid.uuid4()),
                title=name,
                workspace=parent.workspace,
                model_fingerprint=parent.model_fingerprint,
                created_at=stamp,
                updated_at=stamp,
                parent_id=parent.id,
                fork_turn=turn,
                meta=dict(parent.meta or {}),
            )
            s.add(child)
            s.flush()
            for model, cols in _FORK_COPIES:
                copy_rows(s, model, cols, session_id, child.id, turn)
            rechain(s, child, rows)
            return session_info(s, child)

        return self._in_write(do, "forking a session")

    def truncate_session(self, session_id: str, turn: int) -> int:
        """Rewind `session_id` in place to the end of `turn` (0: before its first): every later turn's
        rows go, with the bytes only they used. Returns the number of blobs freed."""
        return self._in_write(lambda s: truncate_session(s, session_id, turn), "rewinding a session")

    # -- turns ------------------------------------------------------------------------------------

    def save_turn(
        self,
        session_id: str,
        turn: int,
        *,
        events: Iterable[Event | Mapping[str, Any]],
        recurrent: Mapping[str, torch.Tensor],
        pages: Sequence[PageParts] = (),
        n_tokens: int,
        meta: dict[str, Any] | None = None,
        file_changes: Sequence[FileEdit] = (),
    ) -> SaveStats:
        """Commit one turn in ONE durable transaction: its events (Event or {"kind", "content",
        "data"}), the recurrent tensors whole, the cache pages created since the previous snapshot
        (append-only) and optional file-journal entries. All of it is stored, or none of it."""
        prepared = prepare_turn(
            turn,
            events=events,
            recurrent=recurrent,
            pages=pages,
            n_tokens=n_tokens,
            meta=meta,
            file_changes=file_changes,
        )
        return self._in_write(
            lambda s: write_turn(s, session_id, prepared), f"saving turn {turn} of session {session_id}"
        )

    def append_events(self, session_id: str, turn: int, events: Iterable[Event | Mapping[str, Any]]) -> int:
        """Add events after those of `turn` without a snapshot: what a turn that was not saved (cancelled,
        refused) still records, such as the hooks it ran (agent/loop.py). Returns how many."""
        evs = [event_of(e) for e in events]
        what = f"recording events of session {session_id}"
        return self._in_write(lambda s: append_events(s, session_id, turn, evs), what)

    def load_snapshot(
        self,
        session_id: str,
        turn: int | None = None,
        *,
        window: int | None = None,
        sinks: int = 0,
        fingerprint: str | None = None,
        device: torch.device | str | None = None,
    ) -> Snapshot:
        """The snapshot of `turn` (latest when None), verified, as fresh tensors on `device` (CPU by
        default; on CUDA the verified chunks are copied straight to the GPU through a small pinned
        ring). With `window`, only pages overlapping [0, sinks) or [n_tokens - window, n_tokens) are
        read. `fingerprint` is the loading model's: a snapshot made by another model is refused.
        The tensors of one blob (the recurrent state, or one page) are views of one buffer."""
        return self._in_read(
            lambda s: read_snapshot(
                s, session_id, turn, window=window, sinks=sinks, fingerprint=fingerprint, device=device
            ),
            f"loading session {session_id}",
        )

    def turns(self, session_id: str) -> list[TurnInfo]:
        """The saved turns of a session, oldest first (no tensors read)."""

        def do(s: Session) -> list[TurnInfo]:
            session_row(s, session_id)
            q = select(SnapshotRow).where(SnapshotRow.session_id == session_id).order_by(SnapshotRow.turn)
            return [TurnInfo(r.turn, r.n_tokens, utc(r.created_at), dict(r.meta or {})) for r in s.scalars(q)]

        return self._in_read(do, "listing turns")

    def snapshot_bytes(self, session_id: str | None = None) -> dict[str, int]:
        """Bytes of stored snapshots (recurrent state + cache pages) by session id: `session_id`'s
        alone, or every session's (memory/queries.py `snapshot_bytes`)."""
        if session_id is not None:
            self.get_session(session_id)  # SessionNotFoundError names the id
        ids = None if session_id is None else [session_id]
        return self._in_read(lambda s: snapshot_bytes(s, ids), "measuring snapshots")

    def events(self, session_id: str, *, upto_turn: int | None = None) -> list[Event]:
        """The session's events in order (turn, seq); only those of turns <= `upto_turn` when given."""

        def do(s: Session) -> list[Event]:
            session_row(s, session_id)
            q = select(EventRow).where(EventRow.session_id == session_id)
            if upto_turn is not None:
                q = q.where(EventRow.turn <= upto_turn)
            rows = s.scalars(q.order_by(EventRow.turn, EventRow.seq))
            return [Event(r.kind, r.content, r.data, r.turn, r.seq, utc(r.created_at)) for r in rows]

        return self._in_read(do, "reading events")

    def collect_garbage(self) -> int:
        """Delete every blob nothing references (delete_session already does this for its own)."""
        return self._in_write(lambda s: blobs.delete_unreferenced(s), "collecting garbage")

    # -- upkeep -----------------------------------------------------------------------------------

    def check(self, session_id: str | None = None) -> CheckReport:
        """Full verification, read-only: SQLite's integrity_check, each session's digest chain (or
        only `session_id`'s) and every byte of every blob (or of the blobs that session uses)."""
        if session_id is not None:
            self.get_session(session_id)  # SessionNotFoundError before a long check
        return self._in_read(lambda s: check(s, session_id), "checking the database")

    def compact(self) -> CompactStats:
        """Delete unreferenced blobs, then give the free space back to the file system (SQLite) or
        mark it reusable (PostgreSQL). Returns the blobs freed and the file's size before and after."""
        self._refuse_writes()
        path = database.sqlite_file(self.url)
        before = _file_size(path)
        freed = self.collect_garbage()
        if self._engine.dialect.name == "sqlite":
            self._run(lambda: vacuum_sqlite(self._engine), "compacting the database")
            self.checkpoint()  # the log is copied back and the file truncated to its used pages
        elif self._engine.dialect.name == "postgresql":
            self._run(lambda: vacuum_postgresql(self._engine), "compacting the database")
        return CompactStats(freed, before, _file_size(path))


def _file_size(path: Path | None) -> int | None:
    """Bytes of an SQLite file and its write-ahead log; None for a server database."""
    if path is None:
        return None
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
