"""The journal and undo: every write can be reverted, and an undo never overwrites work done
outside the agent since (it refuses and changes nothing)."""

from __future__ import annotations

import pytest
from hybrid_agent.tools import Journal, JournalEntry, MemoryJournal, ToolRegistry, UndoError


def test_undo_last_steps_back_one_change_at_a_time(registry, sandbox):
    start = sandbox.state()
    registry.call("write_file", {"path": "notes/a.txt", "content": "one\n"}, turn=1)
    registry.call("edit_file", {"path": "notes/a.txt", "old_string": "one", "new_string": "two"}, turn=2)
    registry.call("edit_file", {"path": "hello.txt", "old_string": "hello", "new_string": "bye"}, turn=2)
    assert registry.undo_last() == "undid the change to hello.txt from turn 2 (restored)"
    assert (sandbox.ws / "hello.txt").read_text() == "hello\n"
    assert registry.undo_last() == "undid the change to notes/a.txt from turn 2 (restored)"
    assert (sandbox.ws / "notes/a.txt").read_text() == "one\n"
    assert registry.undo_last() == "undid the change to notes/a.txt from turn 1 (deleted)"
    # The created folder stays (folders are not journaled); every file is as it was.
    assert {k: v for k, v in sandbox.state().items() if k != "ws/notes"} == start
    with pytest.raises(UndoError, match="nothing to undo"):
        registry.undo_last()
    assert all(e.reverted for e in registry.journal.entries())


def test_undo_after_turn_reverts_only_later_turns(registry, sandbox):
    registry.call("write_file", {"path": "keep.txt", "content": "turn 1\n"}, turn=1)
    after_turn_1 = sandbox.state()
    registry.call("write_file", {"path": "keep.txt", "content": "turn 2\n"}, turn=2)
    registry.call("write_file", {"path": "new.txt", "content": "turn 3\n"}, turn=3)
    registry.call("edit_file", {"path": "src/main.py", "old_string": "hi", "new_string": "yo"}, turn=3)
    msg = registry.undo_after_turn(1)
    assert msg == "undid 3 change(s) after turn 1 in 3 file(s): keep.txt, new.txt, src/main.py"
    assert sandbox.state() == after_turn_1
    assert registry.undo_after_turn(1) == "nothing to undo after turn 1"


def test_undo_refused_when_file_changed_outside(registry, sandbox):
    registry.call("write_file", {"path": "a.txt", "content": "agent\n"}, turn=1)
    registry.call("write_file", {"path": "b.txt", "content": "agent\n"}, turn=1)
    (sandbox.ws / "a.txt").write_text("human edit\n")
    before = sandbox.state()
    with pytest.raises(UndoError) as err:
        registry.undo_after_turn(0)
    assert "a.txt was changed outside the agent since turn 1 (expected 6 bytes, found 11 bytes)" in str(
        err.value
    )
    assert "nothing was changed" in str(err.value)
    assert sandbox.state() == before  # b.txt was not reverted either: all or nothing
    with pytest.raises(UndoError, match=r"b\.txt"):  # undo_last hits b.txt, which is intact...
        (sandbox.ws / "b.txt").unlink()  # ...unless it was deleted outside
        registry.undo_last()


def test_undo_refused_when_created_file_was_deleted_outside_then_recreated(registry, sandbox):
    registry.call("write_file", {"path": "c.txt", "content": "x"}, turn=1)
    (sandbox.ws / "c.txt").unlink()
    with pytest.raises(UndoError, match="expected 1 bytes, found absent"):
        registry.undo_last()


class ListJournal:
    """A second Journal implementation, shaped like memory's file-change table (rows + a flag)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, turn: int, path: str, before: bytes | None, after: bytes | None) -> None:
        self.rows.append(
            {
                "id": len(self.rows) + 1,
                "turn": turn,
                "path": path,
                "before": before,
                "after": after,
                "reverted": False,
            }
        )

    def entries(self, after_turn: int | None = None) -> list[JournalEntry]:
        return [JournalEntry(**r) for r in self.rows if after_turn is None or r["turn"] > after_turn]

    def mark_reverted(self, entry_ids) -> None:
        ids = set(entry_ids)
        for r in self.rows:
            if r["id"] in ids:
                r["reverted"] = True


def test_registry_with_another_journal(sandbox):
    journal = ListJournal()
    assert isinstance(journal, Journal) and isinstance(MemoryJournal(), Journal)
    reg = ToolRegistry(sandbox.ws, journal=journal, load_plugins=False)
    reg.call("write_file", {"path": "hello.txt", "content": "changed\n"}, turn=4)
    assert journal.rows[0]["before"] == b"hello\n" and journal.rows[0]["after"] == b"changed\n"
    reg.undo_last()
    assert (sandbox.ws / "hello.txt").read_text() == "hello\n" and journal.rows[0]["reverted"]


def test_identical_rewrite_is_not_journaled(registry):
    registry.call("write_file", {"path": "hello.txt", "content": "hello\n"})
    assert registry.journal.entries() == []


def test_journal_backed_by_memory_store(sandbox, tmp_path_factory):
    """The adapter agent/ needs, over the real memory Store: three one-line methods."""
    from hybrid_agent.memory import Store

    class StoreJournal:
        def __init__(self, store: Store, session_id: str) -> None:
            self.store, self.session_id = store, session_id

        def record(self, turn, path, before, after):
            self.store.record_file_change(self.session_id, turn, path, before, after)

        def entries(self, after_turn=None):
            return self.store.file_changes(self.session_id, after_turn)

        def mark_reverted(self, entry_ids):
            self.store.mark_reverted(entry_ids)

    with Store(str(tmp_path_factory.mktemp("db") / "journal.sqlite")) as store:
        session = store.create_session("undo test", str(sandbox.ws), "fingerprint")
        journal = StoreJournal(store, session.id)
        assert isinstance(journal, Journal)
        reg = ToolRegistry(sandbox.ws, journal=journal, load_plugins=False)
        before = sandbox.state()
        reg.call("write_file", {"path": "hello.txt", "content": "v2\n"}, turn=1)
        reg.call("write_file", {"path": "made.txt", "content": "new\n"}, turn=2)
        assert [(c.turn, c.path) for c in store.file_changes(session.id)] == [
            (1, "hello.txt"),
            (2, "made.txt"),
        ]
        assert reg.undo_after_turn(0).startswith("undid 2 change(s)")
        assert sandbox.state() == before
        assert all(c.reverted for c in store.file_changes(session.id))
