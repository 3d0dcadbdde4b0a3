"""Two processes writing different sessions of one database at once: no lost writes, and a busy
database is waited for and retried, never reported to the user as "database is locked"."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hybrid_agent.memory import Event, Store, StoreBusyError

from hybrid_agent import memory

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crash_writer_conc", HERE / "crash_writer.py")
assert _spec is not None and _spec.loader is not None
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)

TURNS = 20  # per process: enough interleaved commits to race, under 5 s on 2 cores


def test_two_processes_write_different_sessions_at_once(store_url: str) -> None:
    # Both processes open a database that does not exist yet: they also race to create the schema.
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), "write", store_url, "new", str(TURNS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=HERE.parents[1],
        )
        for _ in range(2)
    ]
    heads = []
    for proc in procs:  # both have opened the database and created their session
        assert proc.stdout is not None
        heads.append([proc.stdout.readline().decode().strip() for _ in range(2)])
        assert heads[-1][1] == "ready", heads[-1]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    outputs = [p.communicate(timeout=300) for p in procs]
    sessions: list[str] = []
    spans: list[tuple[float, float]] = []
    for proc, head, (out, err) in zip(procs, heads, outputs, strict=True):
        lines = [*head, *out.decode().splitlines()]
        assert proc.returncode == 0, f"writer failed: {lines[-3:]} {err.decode()[-2000:]}"
        assert "locked" not in err.decode() and not any(line.startswith("error") for line in lines)
        sessions.append(lines[0].split()[1])
        assert lines[2].startswith("started ")
        commits = [line.split() for line in lines[3:]]
        assert [int(c[1]) for c in commits] == list(range(1, TURNS + 1))
        spans.append((float(lines[2].split()[1]), float(commits[-1][2])))
    assert sessions[0] != sessions[1]
    # Both were writing at the same time: each started before the other had finished. (SQLite's
    # lock is not fair, so one writer may commit all its turns while the other waits: it must wait,
    # not fail — which is what the checks above assert.)
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    with Store(store_url) as store:
        for sid in sessions:
            assert [t.turn for t in store.turns(sid)] == list(range(1, TURNS + 1))
            snap = store.load_snapshot(sid)
            for name, t in writer.expected_recurrent(TURNS).items():
                assert torch.equal(snap.recurrent[name], t)
            assert len(snap.pages) == TURNS
            assert len(store.events(sid)) == 2 * TURNS


def hold_write_lock(path: Path, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_busy_database_is_retried_not_reported(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's own wait is made tiny so that our retry loop is what has to get the write through.
    monkeypatch.setattr(memory.database, "BUSY_TIMEOUT_S", 0.01)
    with Store(sqlite_path) as store:
        sid = store.create_session("t", "/w", "fp").id
        started = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(sqlite_path, 0.6, started))
        holder.start()
        started.wait()
        t0 = time.monotonic()
        store.save_turn(sid, 1, events=[Event("user", "hi")], recurrent={"x": torch.ones(3)}, n_tokens=1)
        waited = time.monotonic() - t0
        holder.join()
        assert waited >= 0.4  # it did have to wait for the other writer
        assert store.load_snapshot(sid).turn == 1


def test_writer_that_never_gets_the_lock_gets_a_clear_error(
    sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory.database, "BUSY_TIMEOUT_S", 0.01)
    monkeypatch.setattr(memory.database, "RETRY_BUDGET_S", 0.3)
    with Store(sqlite_path) as store:
        sid = store.create_session("t", "/w", "fp").id
        started = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(sqlite_path, 1.5, started))
        holder.start()
        started.wait()
        with pytest.raises(StoreBusyError, match=r"stayed locked by other writers.*close other hybrid-agent"):
            store.save_turn(sid, 1, events=[], recurrent={"x": torch.ones(3)}, n_tokens=1)
        holder.join()
        assert store.turns(sid) == []


def test_opening_a_new_database_waits_for_another_writer(
    sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Switching a new file to WAL needs an exclusive lock; someone else holding the write lock
    # (another process creating the same database) must make us wait, not fail.
    monkeypatch.setattr(memory.database, "BUSY_TIMEOUT_S", 0.01)
    started = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(sqlite_path, 0.5, started))
    holder.start()
    started.wait()
    with Store(sqlite_path) as store:
        assert store.create_session("t", "/w", "fp").title == "t"
    holder.join()


def test_retried_errors_are_read_from_either_postgresql_driver() -> None:
    # Which errors roll back and retry a transaction is read from the SQLSTATE: psycopg's `sqlstate`,
    # or psycopg2's `pgcode` (SQLAlchemy's default driver for postgresql:// URLs). Missed, a foreign-key
    # race would be reported as a damaged database instead of being retried.
    psycopg = pytest.importorskip("psycopg")
    from hybrid_agent.memory.database import _busy_reason
    from sqlalchemy.exc import IntegrityError, OperationalError

    fk = IntegrityError("INSERT", None, psycopg.errors.ForeignKeyViolation("violates foreign key"))
    assert _busy_reason(fk) == "a row it refers to was deleted by a concurrent transaction"
    unique = IntegrityError("INSERT", None, psycopg.errors.UniqueViolation("duplicate key"))
    assert _busy_reason(unique) is None

    class Psycopg2Error(Exception):
        pgcode = "40P01"  # how psycopg2's errors carry the SQLSTATE

    deadlock = OperationalError("UPDATE", None, Psycopg2Error("deadlock detected"))
    assert _busy_reason(deadlock) == "it deadlocked with a concurrent transaction"
