"""The snapshot index's digest chain (memory/integrity.py): rows changed in the database directly are
refused on load and fork with an error naming the session and the turn, never restored silently."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from alembic import command
from hybrid_agent.memory import CorruptDataError, Store
from hybrid_agent.memory.database import WRITE_OPTION, _alembic_config, create_store_engine, normalize_url
from hybrid_agent.model import Page


def save_turns(store: Store, n: int = 3, fingerprint: str = "fp") -> str:
    sid = store.create_session("t", "/w", fingerprint, meta={"window": None, "sinks": 4}).id
    for turn in range(1, n + 1):
        store.save_turn(
            sid,
            turn,
            events=[{"kind": "user", "content": f"turn {turn}"}],
            recurrent={"s": torch.full((16,), float(turn))},
            pages=[Page(4 * (turn - 1), 4 * turn, {"k": torch.full((4, 2), float(turn))})],
            n_tokens=4 * turn,
            meta={"state_layout": {"ssm": "v1"}, "sampler": [turn, 0.5]},
        )
    return sid


def sql(store: Store, text: str, **params: object) -> None:
    with store._engine.begin() as conn:
        conn.execute(sa.text(text), params)


def drop_blob_row(store: Store, sha: str) -> None:
    """Delete a blob that rows still point at, as damage would (the foreign keys are bypassed)."""
    if store._engine.dialect.name == "sqlite":
        raw = store._engine.raw_connection()  # autocommit: the pragma is a no-op inside a transaction
        try:
            raw.execute("PRAGMA foreign_keys = OFF")
            raw.execute("DELETE FROM blob_chunks WHERE blob_sha256 = ?", (sha,))
            raw.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
            raw.execute("PRAGMA foreign_keys = ON")
        finally:
            raw.close()
        return
    with store._engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.execute(sa.text("DELETE FROM blob_chunks WHERE blob_sha256 = :b"), {"b": sha})
        conn.execute(sa.text("DELETE FROM blobs WHERE sha256 = :b"), {"b": sha})


def test_a_turn_number_flipped_down_is_refused_not_resumed_older(store: Store) -> None:
    # Before the chain, turn 3's row renumbered to 0 made turn 2 the "latest": resume went on there.
    sid = save_turns(store)
    sql(store, "UPDATE snapshots SET turn = 0 WHERE session_id = :s AND turn = 3", s=sid)
    latest = store.get_session(sid).latest_turn
    assert latest == 2
    for turn in (None, latest):  # what Agent.resume asks for: the latest turn, by number
        with pytest.raises(CorruptDataError, match=rf"session {sid} turn 0: .*digest"):
            store.load_snapshot(sid, turn)


def test_swapped_turn_numbers_are_refused(store: Store) -> None:
    sid = save_turns(store)
    sql(store, "UPDATE snapshots SET turn = -1 WHERE session_id = :s AND turn = 3", s=sid)
    sql(store, "UPDATE snapshots SET turn = 3 WHERE session_id = :s AND turn = 2", s=sid)
    sql(store, "UPDATE snapshots SET turn = 2 WHERE session_id = :s AND turn = -1", s=sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: .*does not match its digest"):
        store.load_snapshot(sid)
    assert store.load_snapshot(sid, 1).turn == 1  # the intact prefix of the chain still loads


def test_a_deleted_latest_row_is_refused(store: Store) -> None:
    sid = save_turns(store)
    sql(store, "DELETE FROM snapshots WHERE session_id = :s AND turn = 3", s=sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: it is not the turn saved last"):
        store.load_snapshot(sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: .*nothing was saved"):
        store.save_turn(sid, 3, events=[], recurrent={"s": torch.zeros(1)}, n_tokens=12)


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE state_pages SET turn = 1 WHERE session_id = :s AND turn = 2",
        "UPDATE snapshots SET n_tokens = 4 WHERE session_id = :s AND turn = 2",
        'UPDATE snapshots SET meta = \'{"state_layout": {"ssm": "v2"}}\' WHERE session_id = :s AND turn = 2',
        "UPDATE sessions SET model_fingerprint = 'other' WHERE id = :s",
        'UPDATE sessions SET meta = \'{"window": 8, "sinks": 4}\' WHERE id = :s',
        "UPDATE snapshots SET digest = NULL WHERE session_id = :s AND turn = 2",
    ],
    ids=["page-moved", "n_tokens", "layout", "fingerprint", "policy", "digest-dropped"],
)
def test_every_field_that_describes_the_state_is_covered(store: Store, change: str) -> None:
    sid = save_turns(store)
    sql(store, change, s=sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn \d"):
        store.load_snapshot(sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn \d"):
        store.fork_session(sid, 3)


def test_a_row_moved_to_another_session_is_refused(store: Store) -> None:
    a, b = save_turns(store, 2), save_turns(store, 1)
    sql(store, "DELETE FROM snapshots WHERE session_id = :b", b=b)
    sql(store, "UPDATE snapshots SET session_id = :b WHERE session_id = :a AND turn = 2", a=a, b=b)
    with pytest.raises(CorruptDataError, match=rf"session {b} turn 2"):
        store.load_snapshot(b)


def test_a_fork_gets_its_own_valid_chain_and_goes_on(store: Store) -> None:
    sid = save_turns(store)
    fork = store.fork_session(sid, 2).id
    assert store.load_snapshot(fork).turn == 2
    store.save_turn(fork, 3, events=[], recurrent={"s": torch.zeros(2)}, n_tokens=9)
    assert store.load_snapshot(fork).n_tokens == 9
    assert store.load_snapshot(store.fork_session(fork, 3).id).turn == 3


def test_rows_from_before_the_chain_still_load_and_the_chain_goes_on(store: Store) -> None:
    # What a database written before revision 0003 holds after the upgrade: no digests anywhere.
    sid = save_turns(store, 2)
    sql(store, "UPDATE snapshots SET digest = NULL WHERE session_id = :s", s=sid)
    sql(store, "UPDATE sessions SET head_digest = NULL WHERE id = :s", s=sid)
    assert store.load_snapshot(sid).turn == 2
    store.save_turn(sid, 3, events=[], recurrent={"s": torch.zeros(2)}, n_tokens=12)
    assert store.load_snapshot(sid).turn == 3
    assert store.load_snapshot(store.fork_session(sid, 3).id).turn == 3
    # once a session has a digested turn, an unchecked row after it is damage
    sql(store, "UPDATE snapshots SET turn = 4, digest = NULL WHERE session_id = :s AND turn = 1", s=sid)
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 4: .*lost its digest"):
        store.load_snapshot(sid, 4)


def test_forking_at_a_turn_whose_blob_row_is_missing_names_it(store: Store) -> None:
    # Before: the copied snapshot row failed its foreign key: a raw IntegrityError (a traceback).
    sid = save_turns(store)
    with store._engine.connect() as conn:
        sha = conn.execute(
            sa.text("SELECT recurrent_blob FROM snapshots WHERE session_id = :s AND turn = 2"), {"s": sid}
        ).scalar_one()
    drop_blob_row(store, sha)
    before = len(store.list_sessions())
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: recurrent state: blob .* missing"):
        store.fork_session(sid, 3)
    assert len(store.list_sessions()) == before  # nothing half-made
    assert store.load_snapshot(store.fork_session(sid, 1).id).turn == 1


@pytest.mark.parametrize(
    ("change", "read"),
    [
        ("UPDATE sessions SET meta = '{bad'", "list_sessions"),
        ("UPDATE sessions SET created_at = 'garbage'", "list_sessions"),
        ("UPDATE snapshots SET meta = '{bad'", "load_snapshot"),
        ("UPDATE snapshots SET n_tokens = 'abc'", "fork_session"),
        ("UPDATE state_pages SET token_start = 'x'", "load_snapshot"),
        ("UPDATE events SET data = '{bad'", "events"),
    ],
)
def test_unreadable_stored_values_are_reported_as_damage(sqlite_path: Path, change: str, read: str) -> None:
    # Before: JSONDecodeError / ValueError tracebacks out of SQLAlchemy's result processing.
    with Store(sqlite_path) as store:
        sid = save_turns(store, 1)
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute(change)
    conn.close()
    args = {"list_sessions": (), "load_snapshot": (sid,), "fork_session": (sid, 1), "events": (sid,)}[read]
    with Store(sqlite_path) as store, pytest.raises(CorruptDataError, match=r"cannot be read.*damaged"):
        getattr(store, read)(*args)


def test_a_database_from_revision_0002_upgrades_and_resumes(store_url: str) -> None:
    # Turns saved, then the schema taken back to 0002 (no digest columns): what an older
    # hybrid-agent left. Opening upgrades it; its turns load, fork, and new turns extend a chain.
    with Store(store_url) as store:
        sid = save_turns(store, 2)
    engine = create_store_engine(normalize_url(store_url))
    cfg = _alembic_config()
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        assert "digest" not in {c["name"] for c in sa.inspect(conn).get_columns("snapshots")}
    engine.dispose()
    with Store(store_url) as store:
        assert store.load_snapshot(sid).turn == 2
        store.save_turn(sid, 3, events=[], recurrent={"s": torch.zeros(2)}, n_tokens=12)
        assert store.load_snapshot(sid).turn == 3
        assert store.load_snapshot(store.fork_session(sid, 2).id).turn == 2
        assert store.check().ok
