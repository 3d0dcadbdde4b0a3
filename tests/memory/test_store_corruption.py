"""Damaged bytes are detected on load, with an error naming the session and the turn."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from hybrid_agent.memory import CorruptDataError, Store
from hybrid_agent.model import Page


def save_two_turns(store: Store, marker: float = 1234.5) -> str:
    sid = store.create_session("t", "/w", "fp").id
    store.save_turn(
        sid,
        1,
        events=[],
        recurrent={"s": torch.zeros(1000)},
        pages=[Page(0, 4, {"k": torch.ones(4, 8)})],
        n_tokens=4,
    )
    # turn 2's recurrent state is a long run of one value: easy to find in the raw file
    store.save_turn(
        sid,
        2,
        events=[],
        recurrent={"s": torch.full((300_000,), marker)},
        pages=[Page(4, 8, {"k": torch.full((4, 8), 2.0)})],
        n_tokens=8,
    )
    return sid


def flip_chunk_byte(store: Store, blob_sha: str, chunk: int, offset: int) -> None:
    with store._engine.connect() as conn:
        data = conn.execute(
            sa.text("SELECT data FROM blob_chunks WHERE blob_sha256 = :b AND idx = :i"),
            {"b": blob_sha, "i": chunk},
        ).scalar_one()
    damaged = bytearray(data)
    damaged[offset] ^= 0x01
    with store._engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b AND idx = :i"),
            {"d": bytes(damaged), "b": blob_sha, "i": chunk},
        )


def blob_of(store: Store, sql: str, sid: str) -> str:
    with store._engine.connect() as conn:
        return conn.execute(sa.text(sql), {"s": sid}).scalar_one()


def test_flipped_byte_in_recurrent_state_names_session_and_turn(store: Store) -> None:
    sid = save_two_turns(store)
    sha = blob_of(store, "SELECT recurrent_blob FROM snapshots WHERE session_id = :s AND turn = 2", sid)
    flip_chunk_byte(store, sha, 0, 5000)
    with pytest.raises(CorruptDataError) as err:
        store.load_snapshot(sid)
    msg = str(err.value)
    assert f"session {sid} turn 2" in msg and "recurrent state" in msg and "chunk 0" in msg
    # the damage is contained: turn 1 shares nothing with it and still loads
    assert torch.equal(store.load_snapshot(sid, 1).recurrent["s"], torch.zeros(1000))


def test_flipped_byte_in_cache_page_names_the_page(store: Store) -> None:
    sid = save_two_turns(store)
    sha = blob_of(store, "SELECT blob_sha256 FROM state_pages WHERE session_id = :s AND token_start = 0", sid)
    flip_chunk_byte(store, sha, 0, 100)
    # every snapshot whose pages include [0, 4) reports it; a window that excludes it still loads
    for turn in (1, 2):
        with pytest.raises(CorruptDataError, match=rf"session {sid} turn {turn}: cache page \[0,4\)"):
            store.load_snapshot(sid, turn)
    assert [p[0] for p in store.load_snapshot(sid, window=4).pages] == [4]


def test_flipped_byte_in_the_sqlite_file_itself(sqlite_path: Path) -> None:
    marker = 1234.5
    with Store(sqlite_path) as store:
        sid = save_two_turns(store, marker)
    raw = bytearray(sqlite_path.read_bytes())  # closing the store checkpointed the WAL into the file
    run = torch.full((64,), marker).numpy().tobytes()
    at = raw.find(run)
    assert at > 0, "the marker tensor should be stored verbatim in the database file"
    raw[at + 128] ^= 0x40
    sqlite_path.write_bytes(bytes(raw))
    with Store(sqlite_path) as store:
        with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: recurrent state.*blake3"):
            store.load_snapshot(sid)
        assert store.load_snapshot(sid, 1).turn == 1
    assert sqlite_path.read_bytes() == bytes(raw)  # the failed load changed nothing


def test_missing_chunk_is_detected(store: Store) -> None:
    sid = save_two_turns(store)
    sha = blob_of(store, "SELECT recurrent_blob FROM snapshots WHERE session_id = :s AND turn = 2", sid)
    with store._engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM blob_chunks WHERE blob_sha256 = :b"), {"b": sha})
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 2: .*has 0 of its 1 chunks"):
        store.load_snapshot(sid)
