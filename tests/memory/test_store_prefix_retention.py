"""Retention of the saved prefix states (memory/prefix_retention.py, `PrefixIndex.enforce`) on SQLite and
PostgreSQL: least recently used out first, the bytes bound, the time to live, a turn in the middle of a
conversation evicted while the later ones still load, and blobs that other rows share kept."""

from __future__ import annotations

from datetime import timedelta

import torch
from hybrid_agent.memory import Store
from hybrid_agent.memory.prefixes import PrefixIndex, PrefixRef
from hybrid_agent.memory.queries import now
from hybrid_agent.memory.schema import Blob, PrefixRow
from sqlalchemy import func, select, update

WIDTH = 64  # floats a token in the test's pages


def _page(start: int, end: int, seed: float = 0.0) -> tuple[int, int, dict[str, torch.Tensor]]:
    return (start, end, {"k": torch.arange(start * WIDTH, end * WIDTH, dtype=torch.float32) + seed})


def _save(
    index: PrefixIndex, digest: str, n: int, base: PrefixRef | None = None, seed: float = 0.0
) -> PrefixRef:
    start = 0 if base is None else base.n_tokens
    return index.save(
        digest,
        base=base,
        recurrent={"h": torch.full((256,), float(n) + seed)},
        pages=[_page(start, n, seed)],
        n_tokens=n,
        fingerprint="fp",
    )


def _blobs(store: Store) -> int:
    return int(store._in_read(lambda s: s.scalar(select(func.count()).select_from(Blob)), "counting"))


def _digests(store: Store) -> set[str]:
    return set(store._in_read(lambda s: list(s.scalars(select(PrefixRow.digest))), "listing"))


def _age(store: Store, digest: str) -> None:
    """Mark a prefix last used an hour ago."""
    hour_ago = now() - timedelta(hours=1)
    stmt = update(PrefixRow).where(PrefixRow.digest == digest).values(last_used_at=hour_ago)
    store._in_write(lambda s: s.execute(stmt), "ageing a prefix")


def test_the_least_recently_used_go_first_and_their_blobs_with_them(store: Store) -> None:
    index = PrefixIndex(store)
    a, b, c = (_save(index, d, 8, seed=i) for i, d in enumerate("abc"))  # three unrelated prefixes
    one = index.stored_bytes() // 3
    index.touch(["a"])  # a was used after c: b is the least recently used, then c
    blobs = _blobs(store)
    stats = index.enforce(max_bytes=2 * one, ttl_seconds=None)
    assert stats.evicted == 1 and _digests(store) == {"a", "c"}
    assert _blobs(store) == blobs - 2 and stats.blobs_freed == 2  # b's recurrent state and page
    assert stats.bytes_after == index.stored_bytes() <= 2 * one
    index.enforce(max_bytes=one, ttl_seconds=None)
    assert _digests(store) == {"a"}
    assert index.load(a, fingerprint="fp").recurrent["h"][0] == 8.0
    index.enforce(max_bytes=0, ttl_seconds=None)
    assert index.count() == 0 and _blobs(store) == 0 and store.list_sessions() == []
    assert b.session_id != c.session_id


def test_a_turn_in_the_middle_goes_and_the_later_ones_still_load(store: Store) -> None:
    index = PrefixIndex(store)
    a = _save(index, "a", 4)
    b = _save(index, "b", 9, base=a)
    c = _save(index, "c", 12, base=b)
    assert a.session_id == b.session_id == c.session_id  # one conversation, one session
    index.touch(["a", "c"])
    index.enforce(max_bytes=index.stored_bytes() - 1, ttl_seconds=None)
    assert _digests(store) == {"a", "c"}
    snap = index.load(c, fingerprint="fp")  # the chain, rewritten, checks out
    assert [(p[0], p[1]) for p in snap.pages] == [(0, 4), (4, 9), (9, 12)]
    torch.testing.assert_close(torch.cat([p[2]["k"] for p in snap.pages]), torch.arange(12 * WIDTH).float())
    assert snap.recurrent["h"][0] == 12.0
    assert [(p[0], p[1]) for p in index.load(a, fingerprint="fp").pages] == [(0, 4)]
    assert store.check(a.session_id).ok
    # The conversation goes on from c (its session's last turn), appended as before.
    d = _save(index, "d", 15, base=c)
    assert d.session_id == c.session_id
    assert [(p[0], p[1]) for p in index.load(d, fingerprint="fp").pages][-1] == (12, 15)


def test_the_bytes_stay_bounded_over_many_saves(store: Store) -> None:
    index = PrefixIndex(store)
    _save(index, "probe", 6)
    one = index.stored_bytes()
    index.enforce(max_bytes=0, ttl_seconds=None)
    bound = 3 * one + one // 2
    last = None
    for i in range(12):  # conversations of two turns each
        first = _save(index, f"c{i}.0", 6, seed=100 * i)
        last = _save(index, f"c{i}.1", 10, base=first, seed=100 * i)
        index.enforce(max_bytes=bound, ttl_seconds=None)
        assert index.stored_bytes() <= bound
    assert last is not None and "c11.1" in _digests(store)  # the newest is kept
    assert index.load(last, fingerprint="fp").recurrent["h"][0] == 10.0 + 1100


def test_states_unused_for_the_ttl_go(store: Store) -> None:
    index = PrefixIndex(store)
    _save(index, "old", 4)
    _save(index, "new", 5, seed=1)
    _age(store, "old")
    assert index.enforce(max_bytes=None, ttl_seconds=7200).evicted == 0
    assert index.enforce(max_bytes=None, ttl_seconds=1800).evicted == 1
    assert _digests(store) == {"new"}


def test_blobs_that_a_session_or_another_prefix_shares_are_kept(store: Store) -> None:
    index = PrefixIndex(store)
    mine = _save(index, "mine", 4)
    theirs = _save(index, "theirs", 4)  # the same bytes: a fork of the same blobs' addresses
    assert mine.session_id != theirs.session_id
    agent = store.create_session("an agent session", "/w", "fp", {})
    state = {"h": torch.full((256,), 4.0)}
    store.save_turn(agent.id, 1, events=[], recurrent=state, pages=[_page(0, 4)], n_tokens=4)
    blobs = _blobs(store)
    _age(store, "mine")
    assert index.enforce(max_bytes=None, ttl_seconds=1800).evicted == 1
    assert _digests(store) == {"theirs"} and _blobs(store) == blobs  # each blob is still used
    assert index.load(theirs, fingerprint="fp").recurrent["h"][0] == 4.0
    index.enforce(max_bytes=0, ttl_seconds=None)
    assert index.count() == 0
    snap = store.load_snapshot(agent.id, 1, fingerprint="fp")  # every byte it uses is still there
    torch.testing.assert_close(snap.recurrent["h"], state["h"])
    assert store.check(agent.id).ok


def test_a_state_another_server_evicted_is_a_miss_and_its_continuation_is_stored_whole(
    store_url: str,
) -> None:
    with Store(store_url) as one, Store(store_url) as two:
        mine, theirs = PrefixIndex(one), PrefixIndex(two)
        a = _save(mine, "a", 4)
        theirs.enforce(max_bytes=0, ttl_seconds=None)  # the other server evicts everything
        assert mine.find(["a"]) is None
        # This server still holds a's state and continues it, with every page.
        b = mine.save(
            "b",
            base=a,
            recurrent={"h": torch.ones(256)},
            pages=[_page(0, 4), _page(4, 7)],
            n_tokens=7,
            fingerprint="fp",
        )
        snap = theirs.load(b, fingerprint="fp")
        torch.testing.assert_close(
            torch.cat([p[2]["k"] for p in snap.pages]), torch.arange(7 * WIDTH).float()
        )


def test_prefix_sessions_no_prefix_names_are_swept_once_old(store: Store) -> None:
    from hybrid_agent.memory.prefixes import PREFIX_TITLE
    from hybrid_agent.memory.schema import SessionRow

    index = PrefixIndex(store)
    kept = _save(index, "kept", 4)
    stray, young = (store.create_session(PREFIX_TITLE, "", "fp", {"serve": True}) for _ in range(2))
    agent = store.create_session("an agent session", "", "fp", {})
    for sid in (stray.id, young.id, agent.id):
        store.save_turn(
            sid, 1, events=[], recurrent={"h": torch.rand(64)}, pages=[_page(0, 4, 7.0)], n_tokens=4
        )
    hour_ago = now() - timedelta(hours=1)
    stmt = update(SessionRow).where(SessionRow.id.in_([stray.id, agent.id])).values(updated_at=hour_ago)
    store._in_write(lambda s: s.execute(stmt), "ageing sessions")
    blobs = _blobs(store)
    stats = index.enforce(max_bytes=None, ttl_seconds=None, sweep=True)
    assert stats.blobs_freed == 1 and _blobs(store) == blobs - 1  # its recurrent state; the page is shared
    left = {s.id for s in store.list_sessions()}
    assert stray.id not in left and {young.id, agent.id, kept.session_id} <= left
