"""The prefix cache of `hybrid-agent serve` (agent/serve_prefix.py) on its own: digests, the longest
match, the host-memory tier's byte bound, and the database behind it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from hybrid_agent.agent.serve_prefix import PrefixCache
from hybrid_agent.memory import Store
from hybrid_agent.model.state import Page


def _cache(store: Store | None, memory_bytes: int = 1 << 20, fingerprint: str = "fp") -> PrefixCache:
    return PrefixCache(
        store, fingerprint=fingerprint, policy="window=None", layout=None, memory_bytes=memory_bytes
    )


def _put(cache: PrefixCache, ids: list[int], base=None, width: int = 16):
    start = 0 if base is None else base.n_tokens
    page = Page(start, len(ids), {"k": torch.arange(start * width, len(ids) * width, dtype=torch.float32)})
    return cache.put(cache.digest(ids), len(ids), {"h": torch.tensor([float(len(ids))])}, [page], base)


def test_digests_name_the_model_and_the_tokens() -> None:
    a, b = _cache(None), _cache(None, fingerprint="other")
    assert a.digest([1, 2, 3]) == a.digests([1, 2, 3, 4], [1, 3])[1] != b.digest([1, 2, 3])
    assert a.digest([1, 2, 3]) != a.digest([1, 2, 4])
    # The bytes hashed are the ids as int64s in native order (what databases of saved states were
    # written with): sha256 of the header and torch's int64 layout of the ids.
    ids = [0, 5, 2047, 70000, 2**40]
    raw = torch.tensor(ids, dtype=torch.int64).numpy().tobytes()
    assert a.digest(ids) == hashlib.sha256(b"fp\0window=None\0" + raw).hexdigest()


def test_the_longest_boundary_wins_and_the_memory_tier_stays_in_its_bytes() -> None:
    ids = list(range(100))
    cache = _cache(None, memory_bytes=3 * 60 * 16 * 4)  # room for about three entries of 60 tokens
    first = _put(cache, ids[:30])
    second = _put(cache, ids[:60], base=first)
    hit = cache.lookup(ids, [10, 30, 60, 80])
    assert hit is not None and hit.entry is second and hit.source == "memory"
    assert [(p.start, p.end) for p in hit.entry.pages] == [(0, 30), (30, 60)]
    assert cache.lookup(ids, [10, 20]) is None  # no state ends at those
    for n in range(61, 70):  # other prefixes push the least recently used out
        _put(cache, ids[:n])
    assert cache.memory_used <= cache.memory_bytes
    assert cache.lookup(ids, [30]) is None


def test_a_state_leaves_memory_but_not_the_database(tmp_path: Path) -> None:
    ids = list(range(50))
    with Store(tmp_path / "s.db") as store:
        cache = _cache(store, memory_bytes=45 * 16 * 4)
        _put(cache, ids[:20])
        _put(cache, ids[:40])  # pushes the first out of memory (continuing it, it would share its page)
        cache.flush()
        hit = cache.lookup(ids, [20])
        assert hit is not None and hit.source == "database" and hit.entry.n_tokens == 20
        torch.testing.assert_close(hit.entry.pages[0].tensors["k"], torch.arange(0, 320, dtype=torch.float32))
        cache.close()
