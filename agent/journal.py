"""The tools' file journal, backed by the session database.

Changes made during a turn are held here and written by the turn's `save_turn`, in the same
transaction as its events and snapshot (docs/design.md, step 5). A turn that is cancelled or fails still
changed files on disk, so its changes are then written on their own (`flush`): nothing a tool did is
ever left out of the journal that undo and rewind read.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable

from hybrid_agent.agent.errors import AgentError
from hybrid_agent.memory import FileEdit, Store
from hybrid_agent.tools.journal import JournalEntry
from hybrid_agent.tools.registry import ToolRegistry


class StoreJournal:
    """`hybrid_agent.tools.journal.Journal` over `Store.file_changes` for the agent's current session."""

    def __init__(self, store: Store, session_id: Callable[[], str]) -> None:
        self._store = store
        self._session_id = session_id
        self._pending: list[JournalEntry] = []
        # Pending entries have negative ids until they are saved (stored ids are positive).
        self._ids = itertools.count(-1, -1)
        self._lock = threading.Lock()

    def record(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> None:
        with self._lock:
            self._pending.append(JournalEntry(next(self._ids), turn, path, before, after))

    def entries(self, after_turn: int | None = None) -> list[JournalEntry]:
        saved = [
            JournalEntry(c.id, c.turn, c.path, c.before, c.after, c.reverted)
            for c in self._store.file_changes(self._session_id(), after_turn=after_turn)
        ]
        with self._lock:
            pending = [e for e in self._pending if after_turn is None or e.turn > after_turn]
        return saved + pending

    def mark_reverted(self, entry_ids: Iterable[int]) -> None:
        ids = set(entry_ids)
        with self._lock:
            # A pending change that is undone before it was saved is simply not saved.
            self._pending = [e for e in self._pending if e.id not in ids]
        stored = [i for i in ids if i > 0]
        if stored:
            self._store.mark_reverted(stored)

    def take_pending(self) -> list[FileEdit]:
        """The changes of the running turn, for `save_turn`; the journal forgets them."""
        with self._lock:
            pending, self._pending = self._pending, []
        return [FileEdit(e.path, e.before, e.after) for e in pending]

    def flush(self, turn: int) -> None:
        """Write the running turn's changes on their own (the turn was not saved)."""
        for edit in self.take_pending():
            self._store.record_file_change(self._session_id(), turn, edit.path, edit.before, edit.after)


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
