"""Blob digest algorithms (memory/blobs.py, docs/design.md "Blob digests"): new blobs are BLAKE3 with
`b3:` addresses; a database written with sha256 (as every hybrid-agent before schema revision 0005
did) opens, verifies with sha256 and resumes, and new turns in it are BLAKE3."""

from __future__ import annotations

import hashlib

import blake3
import pytest
import sqlalchemy as sa
import torch
from alembic import command
from hybrid_agent.memory import CorruptDataError, Store, blobs
from hybrid_agent.memory.database import WRITE_OPTION, _alembic_config, create_store_engine, normalize_url
from hybrid_agent.model import Page

BIG = (2 * blobs.CHUNK_SIZE) // 4 + 1000  # fp32 elements: a 3-chunk blob, loaded through the pool


def tensors(turn: int) -> tuple[dict[str, torch.Tensor], list[Page]]:
    gen = torch.Generator().manual_seed(turn)
    recurrent = {"s": torch.randn(BIG, generator=gen)}
    pages = [Page(4 * (turn - 1), 4 * turn, {"k": torch.randn(4, 8, generator=gen)})]
    return recurrent, pages


def save(store: Store, sid: str, turn: int) -> None:
    recurrent, pages = tensors(turn)
    store.save_turn(
        sid, turn, events=[{"kind": "user", "content": f"turn {turn}"}], recurrent=recurrent, pages=pages,
        n_tokens=4 * turn,
    )  # fmt: skip


def assert_resumes(store: Store, sid: str, turn: int) -> None:
    snap = store.load_snapshot(sid, turn)
    recurrent, pages = tensors(turn)
    assert torch.equal(snap.recurrent["s"], recurrent["s"])
    assert torch.equal(snap.pages[-1][2]["k"], pages[0].tensors["k"])  # (start, end, tensors)


def blob_rows(store: Store) -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    """{address: (algorithm, [(chunk digest, chunk bytes)])} read with plain SQL."""
    with store._engine.connect() as conn:
        heads = conn.execute(sa.text("SELECT sha256, algorithm FROM blobs")).all()
        out = {}
        for sha, algo in heads:
            chunks = conn.execute(
                sa.text("SELECT sha256, data FROM blob_chunks WHERE blob_sha256 = :b ORDER BY idx"),
                {"b": sha},
            ).all()
            out[sha] = (algo, [(d, bytes(data)) for d, data in chunks])
    return out


def sql(store: Store, text: str, **params: object) -> None:
    with store._engine.begin() as conn:
        conn.execute(sa.text(text), params)


def write_sha256_database(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Two turns saved with sha256 and the schema taken back to 0003 (no `blobs.algorithm`): the
    database a hybrid-agent without BLAKE3 left."""
    with monkeypatch.context() as m:
        m.setattr(blobs, "WRITE_ALGORITHM", "sha256")
        with Store(store_url) as store:
            sid = store.create_session("old", "/w", "fp").id
            save(store, sid, 1)
            save(store, sid, 2)
    engine = create_store_engine(normalize_url(store_url))
    cfg = _alembic_config()
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
        assert "algorithm" not in {c["name"] for c in sa.inspect(conn).get_columns("blobs")}
    engine.dispose()
    return sid


def test_new_blobs_are_blake3_with_their_chunks_digested_as_blake3_says(store: Store) -> None:
    sid = store.create_session("t", "/w", "fp").id
    save(store, sid, 1)
    rows = blob_rows(store)
    assert rows and all(sha.startswith("b3:") and len(sha) == 64 for sha in rows)
    for algo, chunks in rows.values():
        assert algo == "blake3"
        for digest, data in chunks:  # the reference: the blake3 package on the stored bytes
            assert digest == blake3.blake3(data).hexdigest()
    assert max(len(c) for _, c in rows.values()) == 3
    assert_resumes(store, sid, 1)
    assert store.check().ok


def test_a_sha256_database_upgrades_verifies_with_sha256_and_resumes(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = write_sha256_database(store_url, monkeypatch)
    with Store(store_url) as store:
        old = blob_rows(store)
        assert old and all(not sha.startswith("b3:") for sha in old)
        for algo, chunks in old.values():
            assert algo == "sha256"  # the migration's default for rows from before it
            assert all(d == hashlib.sha256(data).hexdigest() for d, data in chunks)
        assert_resumes(store, sid, 2)
        assert_resumes(store, sid, 1)
        assert store.check().ok
        # New turns in it are BLAKE3; the same bytes under the other algorithm are another blob.
        save(store, sid, 3)
        recurrent, _ = tensors(2)
        store.save_turn(sid, 4, events=[], recurrent=recurrent, n_tokens=20)
        new = {sha: row for sha, row in blob_rows(store).items() if sha not in old}
        assert new and all(sha.startswith("b3:") and row[0] == "blake3" for sha, row in new.items())
        assert torch.equal(store.load_snapshot(sid, 4).recurrent["s"], recurrent["s"])
        assert_resumes(store, sid, 3)
        fork = store.fork_session(sid, 3).id
        assert_resumes(store, fork, 2)
        assert_resumes(store, fork, 3)
        assert store.check().ok


def test_a_damaged_sha256_blob_still_fails_its_sha256_check(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = write_sha256_database(store_url, monkeypatch)
    with Store(store_url) as store:
        with store._engine.connect() as conn:
            sha = conn.execute(
                sa.text("SELECT recurrent_blob FROM snapshots WHERE session_id = :s AND turn = 2"), {"s": sid}
            ).scalar_one()
        data = bytearray(blob_rows(store)[sha][1][1][1])
        data[100] ^= 1
        sql(
            store, "UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b AND idx = 1", d=bytes(data), b=sha
        )
        with pytest.raises(
            CorruptDataError, match=r"turn 2: recurrent state: chunk 1 of .* failed its sha256"
        ):
            store.load_snapshot(sid, 2)
        assert_resumes(store, sid, 1)


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_an_algorithm_cell_that_disagrees_with_the_address_is_damage(store: Store, algorithm: str) -> None:
    # Else a changed cell could pick a check that the stored digests were never made for.
    sid = store.create_session("t", "/w", "fp").id
    save(store, sid, 1)
    sql(store, "UPDATE blobs SET algorithm = :a", a=algorithm)
    with pytest.raises(CorruptDataError, match=rf"records digest algorithm '{algorithm}'"):
        store.load_snapshot(sid)
    assert not store.check().ok
