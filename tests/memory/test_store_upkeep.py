"""Opening checks the file (quick_check) and refuses to write into a damaged or read-only one; the full
check (`Store.check`) and compaction (`Store.compact`) behind `sessions check` and `sessions gc`."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from hybrid_agent.memory import CorruptDataError, DatabaseUnavailableError, Store, blobs
from hybrid_agent.memory.sqlite_chunks import chunk_readers

MARKER = 4321.5


def save_session(store: Store, n: int = 300_000, turns: int = 1) -> str:
    sid = store.create_session("t", "/w", "fp").id
    for turn in range(1, turns + 1):
        store.save_turn(sid, turn, events=[], recurrent={"s": torch.full((n,), MARKER + turn)}, n_tokens=0)
    return sid


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage_overflow_page(path: Path, value: float) -> None:
    """Overwrite the next-page pointer of an overflow page holding a run of `value` (a chunk's bytes):
    the b-tree no longer adds up, which SQLite's quick_check sees, while the sessions table is intact."""
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.full((64,), value).numpy().tobytes())
    assert at > 0
    page = at - at % 65536
    raw[page : page + 4] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(raw))


def test_a_damaged_file_is_opened_read_only_and_refuses_writes(sqlite_path: Path) -> None:
    # Before: open did no check, so new sessions were saved into the damaged file.
    with Store(sqlite_path) as store:
        sid = save_session(store)
    damage_overflow_page(sqlite_path, MARKER + 1)
    before = digest(sqlite_path)
    with Store(sqlite_path) as store:
        assert isinstance(store.refusal, CorruptDataError)
        assert [s.id for s in store.list_sessions()] == [sid]  # what is intact can still be read
        for write in (
            lambda: store.create_session("new", "/w", "fp"),
            lambda: store.delete_session(sid),
            lambda: store.compact(),
        ):
            with pytest.raises(CorruptDataError) as err:
                write()
            assert "is damaged (SQLite quick_check" in str(err.value) and "\n" not in str(err.value)
        report = store.check()
    assert digest(sqlite_path) == before
    assert not report.ok and any(p.startswith("the database file:") for p in report.problems)


def flip_byte_in_chunk(path: Path, value: float) -> None:
    """Change one byte inside a run of `value` (a chunk's data, not the b-tree): quick_check still
    finds the file intact; only the chunk's digest can tell."""
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.full((64,), value).numpy().tobytes())
    assert at > 0
    raw[at + 100] ^= 0x01
    path.write_bytes(bytes(raw))


def test_an_intact_file_is_read_while_its_check_runs_and_written_after_it(sqlite_path: Path) -> None:
    # Opening no longer waits for quick_check (a full read of the file): loads start at once, through
    # a read-only connection with the parallel chunk readers; the first write waits for the verdict.
    n = 3 * (blobs.CHUNK_SIZE // 4)  # three chunks: the parallel load path
    with Store(sqlite_path) as store:
        sid = save_session(store, n)
    with Store(sqlite_path) as store:
        assert store._pending is not None  # the check runs beside the open
        with store._read() as s, s.begin(), chunk_readers(s) as readers:
            assert (readers is not None) == (blobs._WORKERS >= 2)
        snap = store.load_snapshot(sid)
        assert torch.equal(snap.recurrent["s"], torch.full((n,), MARKER + 1))  # bit for bit
        store.save_turn(sid, 2, events=[], recurrent={"s": torch.ones(3)}, n_tokens=0)
        assert store._pending is None and store.refusal is None
    with Store(sqlite_path) as store:
        assert [t.turn for t in store.turns(sid)] == [1, 2]
    with Store(sqlite_path) as store:
        pass  # closed at once: a check still running is interrupted, not waited for to the end


def test_a_damaged_chunk_is_refused_while_the_check_runs(sqlite_path: Path) -> None:
    n = 3 * (blobs.CHUNK_SIZE // 4)
    with Store(sqlite_path) as store:
        sid = save_session(store, n)
    flip_byte_in_chunk(sqlite_path, MARKER + 1)
    with Store(sqlite_path) as store:
        with pytest.raises(CorruptDataError, match="failed its blake3 check"):
            store.load_snapshot(sid)
        assert store.refusal is None  # the b-tree is intact: quick_check cannot see a changed byte


def test_read_only_store_lists_and_refuses_writes_without_touching_the_file(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        sid = save_session(store, 1000)
    before = digest(sqlite_path)
    with Store(sqlite_path, read_only=True) as store:
        assert store.list_sessions()[0].id == sid
        assert store.load_snapshot(sid).turn == 1
        with pytest.raises(DatabaseUnavailableError, match="is open read-only"):
            store.save_turn(sid, 2, events=[], recurrent={"s": torch.ones(1)}, n_tokens=0)
    assert digest(sqlite_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to files whatever their mode")
def test_a_file_without_write_permission_opens_read_only(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        save_session(store, 1000)
    sqlite_path.chmod(0o444)
    try:
        with Store(sqlite_path) as store:
            assert len(store.list_sessions()) == 1
            with pytest.raises(DatabaseUnavailableError, match="is open read-only"):
                store.create_session("x", "/w", "fp")
    finally:
        sqlite_path.chmod(0o644)


def test_check_verifies_every_blob_and_names_the_damage(store: Store) -> None:
    a, b = save_session(store, 1000, turns=2), save_session(store, 2000)
    report = store.check()
    assert report.ok and (report.sessions, report.turns, report.blobs) == (2, 3, 3)
    with store._engine.begin() as conn:  # one flipped byte in b's blob, one renumbered row in a
        sha = conn.execute(sa.text("SELECT recurrent_blob FROM snapshots WHERE session_id = :s"), {"s": b})
        sha = sha.scalar_one()
        data = bytearray(
            conn.execute(
                sa.text("SELECT data FROM blob_chunks WHERE blob_sha256 = :b"), {"b": sha}
            ).scalar_one()
        )
        data[10] ^= 1
        conn.execute(
            sa.text("UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b"), {"d": bytes(data), "b": sha}
        )
        conn.execute(sa.text("UPDATE snapshots SET turn = 7 WHERE session_id = :s AND turn = 2"), {"s": a})
    report = store.check()
    assert len(report.problems) == 2
    assert any(f"session {a} turn 7" in p for p in report.problems)
    assert any(f"blob {sha[:16]}" in p and "blake3 check" in p for p in report.problems)
    only_b = store.check(b)
    assert only_b.sessions == 1 and only_b.blobs == 1 and len(only_b.problems) == 1


@pytest.mark.parametrize("incremental", [True, False], ids=["new-file", "file-without-auto-vacuum"])
def test_compact_gives_the_space_of_deleted_sessions_back(sqlite_path: Path, incremental: bool) -> None:
    with Store(sqlite_path) as store:
        keep = save_session(store, 1000)
        gone = save_session(store, 2_000_000)
    if not incremental:  # a file made before the store set auto_vacuum
        with sqlite3.connect(sqlite_path, isolation_level=None) as conn:
            conn.executescript("PRAGMA auto_vacuum = NONE; VACUUM;")
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        conn.close()
    with Store(sqlite_path) as store:
        store.delete_session(gone)
        store.checkpoint()
        full = sqlite_path.stat().st_size
        assert full > 8_000_000  # deleting frees pages inside the file, it does not shrink it
        stats = store.compact()
        assert store.load_snapshot(keep).turn == 1 and store.check().ok
    assert stats.bytes_after is not None and stats.bytes_after < full // 4
    assert sqlite_path.stat().st_size == stats.bytes_after
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
    conn.close()
