"""The tools' file journal, backed by the session database.

Write-ahead: a tool's change is committed to the session's file-change table (`Store.record_file_change`,
one durable transaction) *before* the file is written (`tools.journal.WriteAheadJournal`). A process
killed at any moment after that still left the entry undo and rewind read: if the write happened, it
can be undone; if it did not, the next open finds the file at its `before` bytes and drops the entry
(`tools.journal.reconcile`, run by `Agent.resume`). A write that fails is cancelled at once. Changes
only found after the fact (a shell command's) are committed as soon as they are found.

The entries of the running turn carry its number before the turn is saved. If that turn ends up saved
in a fork (the session was open twice and the other window saved the number first), they move there
with it (`move_turn`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from hybrid_agent.agent.errors import AgentError
from hybrid_agent.memory import Store
from hybrid_agent.tools.journal import JournalEntry
from hybrid_agent.tools.registry import ToolRegistry

# `session(create)`: the id of the session the changes belong to. With create=False, None while that
# session has no database row yet (nothing saved); create=True makes the row first.
SessionOf = Callable[[bool], "str | None"]


class StoreJournal:
    """`hybrid_agent.tools.journal.WriteAheadJournal` over `Store.file_changes` for the agent's current
    session."""

    def __init__(self, store: Store, session: SessionOf) -> None:
        self._store = store
        self._session = session
        self._lock = threading.Lock()
        self._turn_ids: list[int] = []  # entries made since the last `start_turn`

    def begin(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> int:
        session_id = self._session(True)
        assert session_id is not None
        entry = self._store.record_file_change(session_id, turn, path, before, after)
        with self._lock:
            self._turn_ids.append(entry)
        return entry

    def record(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> None:
        self.begin(turn, path, before, after)

    def cancel(self, entry_id: int) -> None:
        self._store.mark_reverted([entry_id])

    def entries(self, after_turn: int | None = None) -> list[JournalEntry]:
        session_id = self._session(False)
        if session_id is None:
            return []
        return [
            JournalEntry(c.id, c.turn, c.path, c.before, c.after, c.reverted)
            for c in self._store.file_changes(session_id, after_turn=after_turn)
        ]

    def mark_reverted(self, entry_ids: Iterable[int]) -> None:
        ids = list(entry_ids)
        if ids:
            self._store.mark_reverted(ids)

    def start_turn(self) -> None:
        """A turn starts: the entries made from now on are its own."""
        with self._lock:
            self._turn_ids = []

    def move_turn(self, session_id: str) -> None:
        """The running turn is saved in another session (a fork): its entries go along."""
        with self._lock:
            ids = list(self._turn_ids)
        if ids:
            self._store.move_file_changes(ids, session_id)


def attach_journal(registry: ToolRegistry, journal: StoreJournal) -> None:
    """Make `registry` journal its file changes into the session database (the agent's `journal`).

    The registry's own journal is replaced. If it already holds changes (the registry was used before),
    they would drop out of undo and rewind without a word, so that is refused instead; a registry that
    another agent's store journal backed has its changes in that database already.
    """
    current = registry.journal
    if current is journal:
        return
    held = [] if isinstance(current, StoreJournal) else current.entries()
    if held:
        raise AgentError(
            f"the tool registry given to the agent already journals {len(held)} file change(s) of its "
            "own, which undo and rewind could no longer revert; pass a registry that has not changed any "
            "file yet (or registry=None: the agent builds one)"
        )
    registry.journal = journal
