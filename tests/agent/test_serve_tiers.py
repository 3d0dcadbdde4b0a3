"""The device tier of `hybrid-agent serve`'s saved states (agent/serve_prefix.py, agent/serve_tiers.py)
in front of the host tier and the database. On the CPU the "device" is the CPU: the tier logic (LRU
order, demotion, promotion, bytes, pending copies and writes) is the same, only the memory is; the
real CUDA tier has its own test (marked gpu)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.serve_prefix import Entry, PrefixCache
from hybrid_agent.agent.serve_tiers import copy_parts, pins_well
from hybrid_agent.memory import Store
from hybrid_agent.model.state import Page

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import READ, as_history, assert_same_answer, called, chat, serving

WIDTH = 16


def _cache(
    store: Store | None, *, device_bytes: int, memory_bytes: int = 1 << 20, device: str = "cpu"
) -> Any:
    return PrefixCache(
        store, fingerprint="fp", policy="window=None", layout=None, memory_bytes=memory_bytes,
        device_bytes=device_bytes, device=device,
    )  # fmt: skip


def _size(n_tokens: int) -> int:
    """Bytes of an entry of `_put` holding `n_tokens` (its pages and its one-number recurrent state)."""
    return n_tokens * WIDTH * 4 + 4


def _put(cache: PrefixCache, ids: list[int], base: Entry | None = None, device: str = "cpu") -> Entry:
    start = 0 if base is None else base.n_tokens
    k = torch.arange(start * WIDTH, len(ids) * WIDTH, dtype=torch.float32, device=device)
    page = Page(start, len(ids), {"k": k})
    rec = {"h": torch.tensor([float(len(ids))], device=device)}
    return cache.put(cache.digest(ids), len(ids), rec, [page], base)


def _expect(hit: Any, n_tokens: int) -> None:
    """The hit holds exactly the state `_put` saved for `n_tokens` tokens (every page, in order)."""
    assert hit.entry.n_tokens == n_tokens
    assert hit.recurrent["h"].item() == float(n_tokens)
    k = torch.cat([p.tensors["k"].cpu() for p in hit.pages])
    assert torch.equal(k, torch.arange(0, n_tokens * WIDTH, dtype=torch.float32))


def test_lru_order_demotion_to_host_and_promotion_back() -> None:
    ids = list(range(1000))
    cache = _cache(None, device_bytes=2 * _size(10))  # two entries of 10 tokens
    a, b = _put(cache, ids[:10]), _put(cache, [7, *ids[:9]])
    assert cache.device_used == a.size + b.size == 2 * _size(10) and cache.memory_used == 0
    hit = cache.lookup(ids[:11], [10])  # a is now the most recently used: c pushes b out
    assert hit is not None and hit.source == "gpu" and hit.entry is a
    c = _put(cache, [8, *ids[:9]])
    cache.flush()  # host copies made: the demoted entry is in the host tier
    assert cache.device_used == a.size + c.size and cache.memory_used == b.size
    back = cache.lookup([7, *ids[:10]], [10])
    assert back is not None and back.source == "memory" and back.entry is b
    # Found in host memory, it moved back to the device tier (pushing the least recent, a, out).
    again = cache.lookup([7, *ids[:10]], [10])
    assert again is not None and again.source == "gpu"
    assert cache.device_used == b.size + c.size and cache.memory_used == a.size
    first = cache.lookup(ids[:11], [10])
    assert first is not None and first.source == "memory"
    _expect(first, 10)
    cache.close()


def test_host_copies_share_nothing_and_continuations_reuse_the_base_pages() -> None:
    ids = list(range(100))
    cache = _cache(None, device_bytes=1 << 20)
    base = _put(cache, ids[:20])
    more = _put(cache, ids[:50], base=base)
    cache.flush()
    assert base.host is not None and more.host is not None
    for entry in (base, more):  # the copies equal the device tensors, in memory of their own
        for dev, host in zip(entry.pages, entry.host[1], strict=True):
            assert torch.equal(dev.tensors["k"], host.tensors["k"])
            assert dev.tensors["k"].data_ptr() != host.tensors["k"].data_ptr()
    # The continuing state's host copy took the base's page from the base's copy (no second copy).
    assert more.host[1][0].tensors["k"] is base.host[1][0].tensors["k"]
    assert more.pages[0] is base.pages[0]
    _expect(cache.lookup(ids, [50]), 50)
    cache.close()


def test_pages_shared_by_a_conversation_s_states_count_once_in_either_tier() -> None:
    ids = list(range(100))
    both = _size(50) + 4  # the 50 tokens' pages once, and each state's own recurrent tensor
    cache = _cache(None, device_bytes=both)
    base = _put(cache, ids[:20])
    more = _put(cache, ids[:50], base=base)
    assert cache.device_used == both  # both fit: the first 20 tokens' page is held once
    cache.flush()
    other = _put(cache, [9, *ids[:9]])
    # Over the bound: the least recent goes first (freeing its recurrent tensor alone, the page being
    # shared), then the next, until under it; both land in the host tier, still sharing the page.
    cache.flush()
    assert cache.device_used == other.size == _size(10)
    assert cache.memory_used == both
    for n, entry in ((20, base), (50, more)):
        hit = cache.lookup(ids[: n + 1], [n])
        assert hit is not None and hit.source == "memory" and hit.entry is entry
        _expect(hit, n)
    cache.close()


@pytest.mark.parametrize("with_db", [True, False])
def test_a_state_whose_copy_or_write_is_pending_is_never_dropped(tmp_path: Path, with_db: bool) -> None:
    ids = list(range(100))
    store = Store(tmp_path / "s.db") if with_db else None
    # Room for the entry of 60 tokens alone on the device, and none in host memory.
    cache = _cache(store, device_bytes=_size(60), memory_bytes=1)
    gate = threading.Event()
    cache._writer.submit(gate.wait, 30)  # hold the writer thread: no host copy, no database write yet
    try:
        first = _put(cache, ids[:30])
        _put(cache, ids[:60], base=first)  # pushes the first out of the device tier, its copy pending
        assert cache.device_used == first.size + _size(60)  # still held on the device, still found
        hit = cache.lookup(ids[:31], [30])
        assert hit is not None and hit.source == "gpu" and hit.entry is first
        _expect(hit, 30)
    finally:
        gate.set()
    cache.flush()
    # Copied, demoted, and out of the 1-byte host tier: gone from memory, kept by the database.
    assert cache.memory_used == 0 and cache.device_used == _size(60)
    longer = cache.lookup(ids[:61], [60])
    assert longer is not None and longer.source == "gpu"
    _expect(longer, 60)
    hit = cache.lookup(ids[:31], [30])
    if with_db:
        assert hit is not None and hit.source == "database"
        _expect(hit, 30)
    else:
        assert hit is None
    cache.close()
    if store is not None:
        store.close()


def test_database_hits_move_to_the_device_tier_when_they_fit(tmp_path: Path) -> None:
    ids = list(range(200))
    with Store(tmp_path / "s.db") as store:
        writer = _cache(store, device_bytes=1 << 20)
        a = _put(writer, ids[:40])
        _put(writer, ids[:100], base=a)
        writer.flush()
        writer.close()
        fresh = _cache(store, device_bytes=_size(100))
        hit = fresh.lookup(ids[:101], [40, 100])
        assert hit is not None and hit.source == "database"
        _expect(hit, 100)
        assert fresh.device_used == _size(100) and fresh.memory_used == 0
        again = fresh.lookup(ids[:101], [40, 100])
        assert again is not None and again.source == "gpu"
        _expect(again, 100)
        fresh.close()
        small = _cache(store, device_bytes=_size(40))  # too small for it: the host tier takes it
        assert small.lookup(ids[:101], [100]).source == "database"
        assert small.device_used == 0 and small.memory_used == _size(100)
        assert small.lookup(ids[:101], [100]).source == "memory"
        small.close()


def test_host_copies_go_in_chunks_that_pause_while_a_request_is_admitted() -> None:
    ids = list(range(100))
    cache = _cache(None, device_bytes=1 << 20)
    cache._copier.chunk_bytes = 64  # the 100 tokens' page (6,400 bytes) in 100 chunks
    cache.hold_copies()
    entry = _put(cache, ids)
    time.sleep(0.3)
    assert entry.host is None  # the writer waits at its first chunk while the model thread admits
    cache.release_copies()
    cache.flush()
    assert entry.host is not None
    for dev, host in zip(entry.pages, entry.host[1], strict=True):
        assert torch.equal(dev.tensors["k"], host.tensors["k"])
        assert dev.tensors["k"].data_ptr() != host.tensors["k"].data_ptr()
    # A hold is bounded: nobody releasing it, the copy goes on once it has lasted its time.
    cache._copier.hold(0.3)
    t0 = time.monotonic()
    other = _put(cache, [7, *ids[:50]])
    cache.flush()
    assert other.host is not None and 0.2 < time.monotonic() - t0 < 5
    _expect(cache.lookup([7, *ids[:50], 1], [51]), 51)
    cache.close()


def test_a_state_moved_to_the_device_keeps_its_positions_on_the_host() -> None:
    """A restore plans from the pages' positions on the host (model/decode/pages.py): promoting a state
    to the device tier copies its cache tensors but keeps its host positions (shared, never changed)."""
    pos, k = torch.arange(5), torch.ones(5, 2)
    pages = [Page(0, 5, {"layers.1.k": k, "layers.1.pos": pos})]
    clones = lambda ts: [t.clone() for t in ts]
    _, moved = copy_parts({"h": torch.zeros(1)}, pages, clones, positions=False)
    assert moved[0].tensors["layers.1.pos"] is pos and moved[0].tensors["layers.1.k"] is not k
    _, copied = copy_parts({"h": torch.zeros(1)}, pages, clones)  # host copies share nothing
    assert copied[0].tensors["layers.1.pos"] is not pos
    for name, t in pages[0].tensors.items():
        assert torch.equal(copied[0].tensors[name], t)


def test_host_copies_are_pinned_only_where_the_power_of_two_rounding_wastes_little() -> None:
    assert pins_well(1 << 20) and pins_well(int((1 << 20) * 0.9)) and pins_well(8)
    assert not pins_well(int((1 << 20) * 0.87))  # rounding up to 2^20 would add 15%
    assert not pins_well((1 << 20) + 1) and not pins_well(0)


def test_no_device_tier_on_a_cpu_by_default() -> None:
    cache = _cache(None, device_bytes=None)
    assert cache.device_capacity == 0 and not cache.on_device
    entry = _put(cache, list(range(10)))
    assert entry.host is not None and cache.memory_used == entry.size and cache.device_used == 0
    cache.close()


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


@pytest.mark.parametrize("concurrent", [1, 2])  # one at a time on the engine; in a batch
def test_served_from_the_device_tier_answers_as_a_fresh_prefill(
    engine: Any, tmp_path: Path, concurrent: int
) -> None:
    first = [{"role": "user", "content": "Show me main.py"}]
    opts = {"max_new_tokens": 24, "max_concurrent": concurrent}
    again_kw: dict[str, Any] = {"tools": [READ], "logprobs": True}
    with serving(engine, str(tmp_path / "s.db"), gpu_tier_bytes=64 << 20, **opts) as served:
        a1, convo = called(served, first)  # a whole answer, a call, whichever model is packaged
        a2 = chat(served, convo, **again_kw)
        assert (
            a2.usage.prompt_tokens_details.cached_tokens
            == a1.usage.prompt_tokens + a1.usage.completion_tokens
        )
        assert served.metric("state_hits_total", tier="gpu") == 1
        status, text = served.raw("/metrics")
        assert status == 200 and 'hybrid_agent_state_hits_total{tier="gpu"} 1.0' in text
        gauge = [line for line in text.splitlines() if line.startswith("hybrid_agent_gpu_tier_bytes ")]
        assert len(gauge) == 1 and float(gauge[0].split()[1]) > 0
    # A restart: read from the database, then moved to the device tier.
    with serving(engine, str(tmp_path / "s.db"), gpu_tier_bytes=64 << 20, **opts) as again:
        b2 = chat(again, convo, **again_kw)
        c2 = chat(again, convo, **again_kw)
        assert again.metric("state_hits_total", tier="database") == 1
        assert again.metric("state_hits_total", tier="gpu") == 1
    with serving(engine, str(tmp_path / "fresh.db"), gpu_tier_bytes=0, **opts) as fresh:
        f2 = chat(fresh, convo, **again_kw)
        assert f2.usage.prompt_tokens_details.cached_tokens == 0
    # greedy: every restore answers what the full prefill does, token by token
    for x in (a2, b2, c2):
        assert_same_answer(x, f2)


def test_an_engine_without_device_snapshots_gets_no_device_tier(engine: Any) -> None:
    import copy

    # As agent/tp_engine.py's leader: its snapshots gather the ranks' shards to the host.
    leader_like = copy.copy(engine)
    leader_like.snapshot_on_device = None
    with serving(leader_like, None, gpu_tier_bytes=64 << 20, max_new_tokens=8) as served:
        assert served.app.state.prefix.device_capacity == 0
        first = [{"role": "user", "content": "hi"}]
        a1 = chat(served, first)
        chat(served, [*first, as_history(a1.choices[0].message), {"role": "user", "content": "more"}])
        assert served.metric("state_hits_total", tier="memory") == 1
        assert served.metric("state_hits_total", tier="gpu") == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_tier_restores_bit_exact_without_a_sync_on_save() -> None:
    from hybrid_agent.agent.engine import ModelEngine
    from hybrid_agent.model.chat import NativeChatFormat
    from hybrid_agent.model.hybrid import HybridLM
    from hybrid_agent.model.tokenizer import ByteTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from test_agent_decode_engine import CFG, greedy

    torch.manual_seed(3)
    lm = HybridLM(CFG).eval().to("cuda")
    live = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    prompt = torch.randint(0, CFG.vocab_size, (300,)).tolist()
    live.prefill(prompt)
    cache = _cache(None, device_bytes=1 << 30, device="cuda")
    assert cache.on_device
    rec, pages = live.snapshot_on_device(0)
    gate = threading.Event()  # the writer thread (whose copy does wait, for itself) starts after the check
    cache._writer.submit(gate.wait, 30)
    torch.cuda.set_sync_debug_mode("error")  # the save must not make the model thread wait on the GPU
    try:
        entry = cache.put(cache.digest(prompt), len(prompt), rec, pages, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        gate.set()
    rest = greedy(live, [5, 6, 7], 30)  # the live state goes on: the saved one must not change
    hit = cache.lookup([*prompt, 5], [len(prompt)])
    assert hit is not None and hit.source == "gpu" and hit.entry is entry
    assert any(t.is_cuda for t in hit.recurrent.values())
    for page in hit.pages:  # positions stay on the host: a restore plans from them (model/decode/pages.py)
        for name, t in page.tensors.items():
            assert t.is_cuda != name.endswith(".pos"), name
    resumed = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    resumed.restore(hit.recurrent, hit.pages)
    assert greedy(resumed, [5, 6, 7], 30) == rest
    cache.flush()  # the host copy: pinned, equal to the device tensors
    assert entry.host is not None
    for dev, host in zip(entry.pages, entry.host[1], strict=True):
        for name, t in dev.tensors.items():
            nbytes = t.numel() * t.element_size()
            if t.is_cuda:  # a host tensor's copy is a plain clone
                assert host.tensors[name].is_pinned() == pins_well(nbytes), name
            assert torch.equal(host.tensors[name], t.cpu()), name
    cache.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_waiting_for_the_model_does_not_wait_for_the_writers_copies() -> None:
    """The batch's step and the join phases wait for the model thread's stream only: a copy of a saved
    state running on the prefix writer's stream (here a kernel spinning ~1 s there) is not waited for."""
    from hybrid_agent.agent.serve_rows import wait_for_model

    dev = torch.device("cuda")
    side = torch.cuda.Stream(dev)
    with torch.cuda.stream(side):
        torch.cuda._sleep(2_000_000_000)
        busy = torch.cuda.Event()
        busy.record(side)
    x = torch.ones(1024, device=dev) * 2  # the model thread's own work, on its stream
    wait_for_model(dev)
    assert not busy.query(), "waited for the writer's stream"
    assert float(x.sum()) == 2048.0
    side.synchronize()


def test_host_pinning_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_agent.agent.serve_tiers import PIN_HOST_ENV, Copier

    monkeypatch.delenv(PIN_HOST_ENV, raising=False)
    assert Copier(torch.device("cpu")).pin
    for off in ("0", "off", "False"):
        monkeypatch.setenv(PIN_HOST_ENV, off)
        assert not Copier(torch.device("cpu")).pin


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pin", ["auto", "0"])
def test_host_copies_pinned_or_plain_as_switched(monkeypatch: pytest.MonkeyPatch, pin: str) -> None:
    """`HYBRID_AGENT_PIN_HOST=0`: the writer's host copies are plain memory, equal to the device's."""
    from hybrid_agent.agent.serve_tiers import PIN_HOST_ENV, Copier

    monkeypatch.setenv(PIN_HOST_ENV, pin)
    copier = Copier(torch.device("cuda"), chunk_bytes=1 << 20)
    src = [torch.randn(1 << 20, device="cuda"), torch.randn(3, 1000, device="cuda")]
    out = copier.to_host(src, copier.mark())
    for s, h in zip(src, out, strict=True):
        assert h.device.type == "cpu" and torch.equal(h, s.cpu())
        assert h.is_pinned() == (pin == "auto" and pins_well(s.numel() * s.element_size()))
