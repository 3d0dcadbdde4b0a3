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
