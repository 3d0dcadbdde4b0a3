"""The prefix index of `hybrid-agent serve` (memory/prefixes.py): longest match, append vs fork, reload."""

from __future__ import annotations

import torch
from hybrid_agent.memory import Store
from hybrid_agent.memory.prefixes import PrefixIndex


def _page(start: int, end: int) -> tuple[int, int, dict[str, torch.Tensor]]:
    return (start, end, {"k": torch.arange(start, end, dtype=torch.float32)})


def test_longest_prefix_wins_and_loads_every_page(store: Store) -> None:
    index = PrefixIndex(store)
    assert index.find(["a", "b"]) is None
    a = index.save(
        "a", base=None, recurrent={"h": torch.ones(3)}, pages=[_page(0, 4)], n_tokens=4, fingerprint="fp"
    )
    b = index.save(
        "b", base=a, recurrent={"h": torch.full((3,), 2.0)}, pages=[_page(4, 9)], n_tokens=9, fingerprint="fp"
    )
    assert b.session_id == a.session_id and b.turn == a.turn + 1  # a growing conversation: one session
    assert index.find(["a", "b", "zz"]) == b
    assert index.find(["a"]) == a
    snap = index.load(b, fingerprint="fp")
    assert [(p[0], p[1]) for p in snap.pages] == [(0, 4), (4, 9)]
    torch.testing.assert_close(
        torch.cat([p[2]["k"] for p in snap.pages]), torch.arange(9, dtype=torch.float32)
    )
    torch.testing.assert_close(snap.recurrent["h"], torch.full((3,), 2.0))
    assert index.load(a, fingerprint="fp").recurrent["h"].tolist() == [1.0, 1.0, 1.0]


def test_a_branch_forks_and_a_duplicate_keeps_the_first(store: Store) -> None:
    index = PrefixIndex(store)
    a = index.save(
        "a", base=None, recurrent={"h": torch.ones(1)}, pages=[_page(0, 4)], n_tokens=4, fingerprint="fp"
    )
    b = index.save(
        "b", base=a, recurrent={"h": torch.ones(1)}, pages=[_page(4, 6)], n_tokens=6, fingerprint="fp"
    )
    c = index.save(
        "c", base=a, recurrent={"h": torch.zeros(1)}, pages=[_page(4, 8)], n_tokens=8, fingerprint="fp"
    )
    assert c.session_id != b.session_id and c.turn == b.turn  # another branch off `a`: a fork
    assert [(p[0], p[1]) for p in index.load(c, fingerprint="fp").pages] == [(0, 4), (4, 8)]
    again = index.save(
        "c", base=None, recurrent={"h": torch.ones(1)}, pages=[_page(0, 8)], n_tokens=8, fingerprint="fp"
    )
    assert again == c and index.count() == 3


def test_two_writers_extending_one_prefix_at_once_both_keep_theirs(store_url: str) -> None:
    """Two processes (two Stores) continue the same stored prefix at the same moment: the session row
    lock orders them, the second forks, and both states load back as saved."""
    import threading

    with Store(store_url) as first:
        a = PrefixIndex(first).save(
            "a", base=None, recurrent={"h": torch.ones(1)}, pages=[_page(0, 4)], n_tokens=4, fingerprint="fp"
        )
    stores = [Store(store_url), Store(store_url)]
    barrier, refs = threading.Barrier(2), {}

    def extend(i: int) -> None:
        barrier.wait()
        refs[i] = PrefixIndex(stores[i]).save(
            f"b{i}",
            base=a,
            recurrent={"h": torch.full((1,), float(i))},
            pages=[_page(4, 6 + i)],
            n_tokens=6 + i,
            fingerprint="fp",
        )

    threads = [threading.Thread(target=extend, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert refs[0].session_id != refs[1].session_id
        for i in range(2):
            snap = PrefixIndex(stores[i]).load(refs[i], fingerprint="fp")
            assert snap.recurrent["h"].tolist() == [float(i)]
            assert [(p[0], p[1]) for p in snap.pages] == [(0, 4), (4, 6 + i)]
    finally:
        for s in stores:
            s.close()


def test_removing_the_session_removes_its_prefixes(store: Store) -> None:
    index = PrefixIndex(store)
    a = index.save(
        "a", base=None, recurrent={"h": torch.ones(1)}, pages=[_page(0, 4)], n_tokens=4, fingerprint="fp"
    )
    store.delete_session(a.session_id)  # `hybrid-agent sessions rm`
    assert index.find(["a"]) is None and index.count() == 0
