"""The file journal: before/after bytes of every change tools make, and undo.

`Journal` is a protocol so that `agent/` can back it with memory's file-change table (persisted with
the session); `MemoryJournal` is the in-process implementation used by tests and by a bare registry.

Undo never overwrites work it did not make: before reverting a change it checks that the file still
holds exactly what the agent wrote (`after`). If someone edited the file since, the undo is refused
and nothing at all is changed.

A journal that keeps its entries on disk implements `WriteAheadJournal`: a tool's write is then
recorded durably *before* the file changes (`begin`), so a process killed right after the write still
left a way to undo it. The entry of a write that never happened (killed between `begin` and the write)
is found on the next open by `reconcile`: the file still holds its `before` bytes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, cast, runtime_checkable

from hybrid_agent.tools.errors import UndoError, WorkspaceError
from hybrid_agent.tools.workspace import Workspace

# Undo reads the current file to compare it; a file bigger than this cannot be one we journaled.
_UNDO_READ_MAX = 1 << 31


@dataclass(frozen=True)
class JournalEntry:
    """One change of one file. `before`/`after` None mean the file did not exist / was deleted."""

    id: int
    turn: int
    path: str  # relative to the workspace root, '/'-separated
    before: bytes | None
    after: bytes | None
    reverted: bool = False


class ChangeRecord(Protocol):
    """What `Journal.entries` yields: `JournalEntry` here, memory's `FileChange` in the agent."""

    @property
    def id(self) -> int: ...
    @property
    def turn(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def before(self) -> bytes | None: ...
    @property
    def after(self) -> bytes | None: ...
    @property
    def reverted(self) -> bool: ...


@runtime_checkable
class Journal(Protocol):
    def record(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> None:
        """Append one change (called right after the change was made; a `WriteAheadJournal` gets
        tool writes through `begin` instead, and only changes found after the fact here)."""
        ...

    def entries(self, after_turn: int | None = None) -> Sequence[ChangeRecord]:
        """All entries (reverted ones included) oldest first; only turns > `after_turn` if given."""
        ...

    def mark_reverted(self, entry_ids: Iterable[int]) -> None:
        """Flag entries as undone so they are not undone twice."""
        ...


@runtime_checkable
class WriteAheadJournal(Journal, Protocol):
    def begin(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> int:
        """Record, durably, a change that is about to be made; returns its entry id. Called instead of
        `record` by tool writes, before the file is touched."""
        ...

    def cancel(self, entry_id: int) -> None:
        """The change announced by `begin` was not made (the write failed): undo must skip it."""
        ...


class MemoryJournal:
    """A thread-safe in-memory journal."""

    def __init__(self) -> None:
        self._entries: list[JournalEntry] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def record(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> None:
        with self._lock:
            self._entries.append(JournalEntry(next(self._ids), turn, path, before, after))

    def entries(self, after_turn: int | None = None) -> list[JournalEntry]:
        with self._lock:
            return [e for e in self._entries if after_turn is None or e.turn > after_turn]

    def mark_reverted(self, entry_ids: Iterable[int]) -> None:
        ids = set(entry_ids)
        with self._lock:
            self._entries = [replace(e, reverted=True) if e.id in ids else e for e in self._entries]


class JournaledChange:
    """One tool write or delete of one file, journaled ahead of the change when the journal can be.

    `Workspace.write_bytes`/`delete` call `before_write(rel, before)` once they know the old bytes,
    right before they touch the file; the caller then calls `done()` on success or `failed()` when the
    workspace raised.
    """

    def __init__(self, journal: Journal, workspace: Workspace, turn: int, after: bytes | None) -> None:
        self.journal, self.workspace, self.turn, self.after = journal, workspace, turn, after
        self.rel: str | None = None
        self.before: bytes | None = None
        self.entry: int | None = None

    def before_write(self, rel: str, before: bytes | None) -> None:
        if before == self.after:
            return  # the same bytes again: nothing to undo
        self.rel, self.before = rel, before
        if isinstance(self.journal, WriteAheadJournal):
            self.entry = self.journal.begin(self.turn, rel, before, self.after)

    def done(self) -> None:
        if self.rel is not None and self.entry is None:  # not journaled ahead: record it now
            self.journal.record(self.turn, self.rel, self.before, self.after)

    def failed(self) -> None:
        """The workspace raised. If the file holds the new bytes anyway (it failed after the change),
        the entry stays; otherwise the change was not made and the entry is cancelled."""
        if self.entry is None or self.rel is None:
            return
        try:
            made = _current(self.workspace, self.rel) == self.after
        except WorkspaceError:
            made = False
        if not made:
            cast(WriteAheadJournal, self.journal).cancel(self.entry)


def reconcile(journal: Journal, workspace: Workspace, after_turn: int = 0) -> list[str]:
    """Match the journal with the disk after a crash: a change journaled ahead whose write never
    happened (the file still holds its `before` bytes, not its `after`) is marked reverted, so undo
    skips it instead of refusing. Only the newest live change of each path can be such a one (the
    next change of a path starts from what is on disk), and only in turns after `after_turn` (a saved
    turn's writes all finished). Returns the paths of the changes dropped."""
    newest: dict[str, ChangeRecord] = {}
    for e in journal.entries(after_turn=after_turn):
        if not e.reverted:
            newest[e.path] = e
    dropped: list[ChangeRecord] = []
    with workspace.lock:
        for path, e in newest.items():
            try:
                now = _current(workspace, path)
            except WorkspaceError:
                continue  # unreadable now: leave it to undo, which says why
            if now == e.before and now != e.after:
                dropped.append(e)
    if dropped:
        journal.mark_reverted(e.id for e in dropped)
    return [e.path for e in dropped]


def _current(ws: Workspace, path: str) -> bytes | None:
    if not ws.resolve(path).exists():
        return None
    return ws.read_bytes(path, max_bytes=_UNDO_READ_MAX)[1]


def _describe(data: bytes | None) -> str:
    return "absent" if data is None else f"{len(data)} bytes"


def _revert(ws: Workspace, entries: Sequence[ChangeRecord], force: bool = False) -> list[str]:
    """Revert `entries` (oldest first) as one unit: check every file, then change them. Returns the paths.
    With `force`, a file changed outside the agent since is overwritten too (its edits are lost)."""
    newest: dict[str, ChangeRecord] = {}
    oldest: dict[str, ChangeRecord] = {}
    for e in entries:
        newest[e.path] = e
        oldest.setdefault(e.path, e)
    conflicts: list[str] = []
    with ws.lock:
        for path, e in newest.items():
            try:
                now = _current(ws, path)
            except WorkspaceError as err:
                conflicts.append(f"{path}: {err}")
                continue
            if now != e.after:
                conflicts.append(
                    f"{path} was changed outside the agent since turn {e.turn} "
                    f"(expected {_describe(e.after)}, found {_describe(now)})"
                )
        if conflicts and not force:
            raise UndoError(
                "undo refused, nothing was changed: "
                + "; ".join(conflicts)
                + ". Restore or commit those files yourself, then undo again."
            )
        for path, e in oldest.items():
            if e.before is None:
                if _current(ws, path) is not None:
                    ws.delete(path, journal_max_bytes=_UNDO_READ_MAX)
            else:
                ws.write_bytes(path, e.before, journal_max_bytes=_UNDO_READ_MAX)
    return list(oldest)


def undo_last(journal: Journal, workspace: Workspace) -> str:
    """Revert the newest change that is not reverted yet. Raises UndoError when refused."""
    live = [e for e in journal.entries() if not e.reverted]
    if not live:
        raise UndoError("nothing to undo: no file changes are recorded")
    e = live[-1]
    _revert(workspace, [e])
    journal.mark_reverted([e.id])
    verb = "deleted" if e.before is None else "restored"
    return f"undid the change to {e.path} from turn {e.turn} ({verb})"


def undo_after_turn(journal: Journal, workspace: Workspace, turn: int, *, force: bool = False) -> str:
    """Revert every change made after `turn`, as one unit. Raises UndoError when refused (a file changed
    outside the agent since; `force` overwrites such files)."""
    live = [e for e in journal.entries(after_turn=turn) if not e.reverted]
    if not live:
        return f"nothing to undo after turn {turn}"
    return _undo_all(journal, workspace, live, f"after turn {turn}", force)


def undo_last_turn(journal: Journal, workspace: Workspace, *, force: bool = False) -> str:
    """Revert every live change of the newest turn that has any, as one unit. Raises UndoError when
    there is none, or when refused (as `undo_after_turn`)."""
    live = [e for e in journal.entries() if not e.reverted]
    if not live:
        raise UndoError("nothing to undo: no file changes are recorded")
    turn = max(e.turn for e in live)
    return _undo_all(journal, workspace, [e for e in live if e.turn == turn], f"of turn {turn}", force)


def _undo_all(journal: Journal, ws: Workspace, live: list[ChangeRecord], what: str, force: bool) -> str:
    paths = _revert(ws, live, force)
    journal.mark_reverted(e.id for e in live)
    return f"undid {len(live)} change(s) {what} in {len(paths)} file(s): " + ", ".join(sorted(paths))
