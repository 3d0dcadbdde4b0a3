"""Fork shares state bytes (no copy), continues independently; delete frees exactly what nothing else uses."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch
from hybrid_agent.memory import Event, FileEdit, Store, TurnNotFoundError
from hybrid_agent.model import Page


def state(turn: int, branch: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * branch + turn)
    return {
        "layers.0.ssm": torch.randn(2, 8, 16, generator=g),
        "layers.1.conv": torch.randn(8, 3, generator=g),
    }


def kv(start: int, end: int, branch: int = 0) -> Page:
    g = torch.Generator().manual_seed(100_000 * branch + start)
    return Page(start, end, {"layers.2.k": torch.randn(end - start, 4, generator=g).to(torch.bfloat16)})


def counts(store: Store) -> dict[str, int]:
    with store._engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("blobs", "blob_chunks", "snapshots", "state_pages", "events", "file_changes")
        }


def run_session(store: Store, sid: str, turns: range, branch: int = 0) -> None:
    for t in turns:
        store.save_turn(
            sid,
            t,
            events=[Event("user", f"b{branch} t{t}")],
            recurrent=state(t, branch),
            pages=[kv((t - 1) * 8, t * 8, branch)],
            n_tokens=t * 8,
            file_changes=[FileEdit(f"f{t}.txt", None, f"branch {branch} turn {t}".encode())],
        )


def test_fork_shares_bytes_and_continues_independently(store: Store) -> None:
    parent = store.create_session("parent", "/w", "fp", meta={"k": 1})
    run_session(store, parent.id, range(1, 6))
    before = counts(store)
    fork = store.fork_session(parent.id, 3)
    after = counts(store)
    assert (fork.parent_id, fork.fork_turn, fork.latest_turn, fork.n_tokens) == (parent.id, 3, 3, 24)
    assert fork.title == "parent (fork at turn 3)" and fork.meta == {"k": 1}
    # no blob was written: only small index rows for turns 1..3
    assert after["blobs"] == before["blobs"] and after["blob_chunks"] == before["blob_chunks"]
    assert after["snapshots"] - before["snapshots"] == 3
    assert after["state_pages"] - before["state_pages"] == 3
    assert after["file_changes"] - before["file_changes"] == 3

    from_parent = store.load_snapshot(parent.id, 3)
    from_fork = store.load_snapshot(fork.id)
    assert from_fork.turn == 3
    for name, t in from_parent.recurrent.items():
        assert torch.equal(from_fork.recurrent[name], t)
    assert [(p[0], p[1]) for p in from_fork.pages] == [(0, 8), (8, 16), (16, 24)]
    assert [e.content for e in store.events(fork.id)] == ["b0 t1", "b0 t2", "b0 t3"]

    run_session(store, fork.id, range(4, 7), branch=1)  # the fork diverges
    assert torch.equal(store.load_snapshot(fork.id).recurrent["layers.0.ssm"], state(6, 1)["layers.0.ssm"])
    assert torch.equal(store.load_snapshot(parent.id).recurrent["layers.0.ssm"], state(5)["layers.0.ssm"])
    assert torch.equal(
        store.load_snapshot(parent.id, 4).pages[-1][2]["layers.2.k"], kv(24, 32).tensors["layers.2.k"]
    )
    assert torch.equal(
        store.load_snapshot(fork.id, 4).pages[-1][2]["layers.2.k"], kv(24, 32, 1).tensors["layers.2.k"]
    )


def test_delete_parent_keeps_fork_and_collects_garbage(store: Store) -> None:
    parent = store.create_session("parent", "/w", "fp")
    run_session(store, parent.id, range(1, 6))
    fork = store.fork_session(parent.id, 2)
    run_session(store, fork.id, range(3, 5), branch=1)
    fork_before = store.load_snapshot(fork.id)

    freed = store.delete_session(parent.id)
    # parent-only blobs: turns 3..5 recurrent + page + file after-bytes = 9; turns 1..2 are the fork's
    assert freed == 9
    assert store.get_session(fork.id).parent_id is None
    fork_after = store.load_snapshot(fork.id)
    for name, t in fork_before.recurrent.items():
        assert torch.equal(fork_after.recurrent[name], t)
    for a, b in zip(fork_before.pages, fork_after.pages, strict=True):
        assert torch.equal(a[2]["layers.2.k"], b[2]["layers.2.k"])
    assert [c.after for c in store.file_changes(fork.id)][:2] == [b"branch 0 turn 1", b"branch 0 turn 2"]
    assert store.load_snapshot(fork.id, 1).turn == 1
    assert [s.id for s in store.list_sessions()] == [fork.id]

    store.delete_session(fork.id)
    assert counts(store) == dict.fromkeys(counts(store), 0)  # everything collected
    assert store.collect_garbage() == 0


def test_shared_content_survives_deleting_one_of_two_unrelated_sessions(store: Store) -> None:
    a = store.create_session("a", "/w", "fp").id
    b = store.create_session("b", "/w", "fp").id
    same = state(1)
    store.save_turn(a, 1, events=[], recurrent=same, n_tokens=0)
    stats = store.save_turn(b, 1, events=[], recurrent=same, n_tokens=0)
    assert stats.bytes_written == 0  # deduplicated across sessions
    assert store.delete_session(a) == 0  # b still uses the blob
    assert torch.equal(store.load_snapshot(b).recurrent["layers.0.ssm"], same["layers.0.ssm"])
    assert store.delete_session(b) == 1


def test_truncate_in_place_keeps_the_chain_and_frees_only_unshared_bytes(store: Store) -> None:
    sid = store.create_session("s", "/w", "fp").id
    run_session(store, sid, range(1, 6))
    fork = store.fork_session(sid, 4).id  # shares turns 1-4
    with pytest.raises(TurnNotFoundError, match="no snapshot of turn 9"):
        store.truncate_session(sid, 9)
    assert store.get_session(sid).latest_turn == 5  # refused: nothing changed
    freed = store.truncate_session(sid, 2)
    assert freed == 3  # turn 5's state, page and file (turns 3-4 are the fork's too)
    assert store.get_session(sid).latest_turn == 2
    assert [e.turn for e in store.events(sid)] == [1, 2] and [c.turn for c in store.file_changes(sid)] == [
        1,
        2,
    ]
    assert store.check().ok
    assert torch.equal(store.load_snapshot(fork, 4).recurrent["layers.1.conv"], state(4)["layers.1.conv"])
    run_session(store, sid, range(3, 4), branch=1)  # the session goes on from turn 2
    assert store.load_snapshot(sid).turn == 3 and store.check().ok
    assert store.truncate_session(sid, 0) > 0 and store.get_session(sid).latest_turn is None
    assert store.events(sid) == [] and store.check().ok


def test_snapshot_bytes_count_each_sessions_own_and_shared_blobs(store: Store) -> None:
    """The bytes a session's snapshots use: what save_turn reported writing for its turns (the tensors
    are random, so nothing deduplicates), a fork's shared turns included; file-change blobs are not."""
    parent = store.create_session("parent", "/w", "fp")
    written = {}
    for t in range(1, 4):
        stats = store.save_turn(
            parent.id, t, events=[], recurrent=state(t), pages=[kv((t - 1) * 8, t * 8)], n_tokens=t * 8,
            file_changes=[FileEdit(f"f{t}.txt", None, bytes([t]) * 5000)],
        )  # fmt: skip
        written[t] = stats.bytes_written
    empty = store.create_session("empty", "/w", "fp")
    fork = store.fork_session(parent.id, 2)
    own = store.save_turn(fork.id, 3, events=[], recurrent=state(3, 1), pages=[kv(16, 24, 1)], n_tokens=24)
    file_bytes = 3 * 5000  # each file-change blob was written in the same save
    assert sum(written.values()) - file_bytes > 0
    sizes = store.snapshot_bytes()
    assert sizes[parent.id] == sum(written.values()) - file_bytes
    assert sizes[fork.id] == written[1] + written[2] - 2 * 5000 + own.bytes_written
    assert sizes[empty.id] == 0
    assert store.snapshot_bytes(fork.id) == {fork.id: sizes[fork.id]}
    store.delete_session(parent.id)
    assert store.snapshot_bytes(fork.id) == {fork.id: sizes[fork.id]}  # the fork keeps the shared bytes
