"""Staged saves of `hybrid-agent serve` (agent/serve_tiers.py, agent/serve_prefix.py,
agent/serve_snapshots.py): with no device tier, a save is snapshotted on the model's device and its host
copy is made by the prefix writer thread, so the model thread (a request's first token) never waits for
it. On the CPU the "device" is the CPU and staging is switched on (`HYBRID_AGENT_STAGE_SAVES=1`): the
path is the same, only the memory is; the CUDA path has its own test (marked gpu)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.serve_prefix import Entry, PrefixCache
from hybrid_agent.agent.serve_snapshots import Snapshotter, snapshot
from hybrid_agent.agent.serve_tiers import STAGE_ENV, stage_fits, stage_mode
from hybrid_agent.memory import Store
from hybrid_agent.model.state import Page

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import as_history, assert_same_answer, chat, serving

WIDTH = 16
WRITER = "hybrid-agent-prefix-writer"


def _cache(store: Store | None, stage: str = "on", device: str = "cpu", **kw: Any) -> PrefixCache:
    kw.setdefault("memory_bytes", 1 << 20)
    return PrefixCache(
        store, fingerprint="fp", policy="window=None", layout=None, device_bytes=0, device=device,
        stage=stage, **kw,
    )  # fmt: skip


def _parts(n: int, start: int = 0, device: str = "cpu") -> tuple[dict[str, torch.Tensor], list[Page]]:
    k = torch.arange(start * WIDTH, n * WIDTH, dtype=torch.float32, device=device)
    return {"h": torch.tensor([float(n)], device=device)}, [Page(start, n, {"k": k})]


def _expect(hit: Any, n: int) -> None:
    assert hit.entry.n_tokens == n and hit.recurrent["h"].item() == float(n)
    k = torch.cat([p.tensors["k"].cpu() for p in hit.pages])
    assert torch.equal(k, torch.arange(0, n * WIDTH, dtype=torch.float32))


def _copies_on(cache: PrefixCache) -> list[str]:
    """The names of the threads that make `cache`'s host copies, as they are made."""
    threads: list[str] = []
    to_host = cache._copier.to_host

    def watched(tensors: list[torch.Tensor], ready: Any) -> list[torch.Tensor]:
        threads.append(threading.current_thread().name)
        return to_host(tensors, ready)

    cache._copier.to_host = watched  # type: ignore[method-assign]
    return threads


def test_stage_switch_and_the_room_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STAGE_ENV, raising=False)
    assert stage_mode() == "auto"
    for value, mode in (("0", "off"), ("off", "off"), ("1", "on"), ("auto", "auto")):
        monkeypatch.setenv(STAGE_ENV, value)
        assert stage_mode() == mode
    monkeypatch.setenv(STAGE_ENV, "sometimes")
    with pytest.raises(ValueError, match="HYBRID_AGENT_STAGE_SAVES takes 1, 0 or auto"):
        stage_mode()
    cpu = torch.device("cpu")  # a CPU device stages only when switched on (no device memory to spare)
    assert stage_fits(1, cpu, "on") and not stage_fits(1, cpu, "auto") and not stage_fits(1, cpu, "off")
    assert not _cache(None, stage="auto").saves_on_device(1)


def test_staged_copies_take_at_most_half_of_what_the_device_could_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The room rule on a CUDA device (its free memory stubbed: no CUDA call is made): a save is staged
    when, with the staged copies still waiting for their host copy, they take at most half of what the
    device could give without them; else it is copied to the host on the model thread."""
    from hybrid_agent.agent import serve_tiers

    monkeypatch.setattr(serve_tiers, "device_room", lambda device: 1000)
    cuda = torch.device("cuda")
    assert stage_fits(500, cuda, "auto") and not stage_fits(501, cuda, "auto")
    assert stage_fits(500, cuda, "on") and not stage_fits(500, cuda, "off")
    # 300 bytes held already: the device could give 1300 without them, so 350 more fit and 351 do not.
    assert stage_fits(350, cuda, "auto", held=300) and not stage_fits(351, cuda, "auto", held=300)
    cache = _cache(None, stage="auto", device="cuda")
    assert cache.saves_on_device(500) and not cache.saves_on_device(501)
    rec, pages = _parts(4)  # a staged save waiting for its copy (size 4 * 16 * 4 + 4 = 260 bytes)
    cache._moving["x"] = Entry("x", 4, rec, pages, staged=True)
    assert cache.staged_used == 260
    assert cache.saves_on_device(370) and not cache.saves_on_device(371)  # 260 + 370 <= (1000 + 260) / 2
    cache.close()


@pytest.mark.parametrize("with_db", [True, False])
def test_a_staged_save_is_found_before_its_host_copy_and_copied_off_the_caller(
    tmp_path: Path, with_db: bool
) -> None:
    store = Store(tmp_path / "s.db") if with_db else None
    cache = _cache(store)
    threads = _copies_on(cache)
    ids = list(range(100))
    gate = threading.Event()
    cache._writer.submit(gate.wait, 30)  # hold the writer thread: no host copy yet
    try:
        assert cache.saves_on_device(1 << 40)  # no device tier, staging on: on the "device"
        rec, pages = _parts(40)
        first = cache.put(cache.digest(ids[:40]), 40, rec, pages, None)
        rec, pages = _parts(70, start=40)
        more = cache.put(cache.digest(ids[:70]), 70, rec, pages, first)
        assert first.staged and first.host is None and more.staged and more.host is None
        both = 70 * WIDTH * 4 + 2 * 4  # the 70 tokens' pages once (shared), and each one's `h`
        assert cache.staged_used == both < first.size + more.size
        assert cache.device_used == 0 and cache.memory_used == 0
        for n, entry in ((40, first), (70, more)):  # found, restored from the device copy itself
            hit = cache.lookup(ids[: n + 1], [n])
            assert hit is not None and hit.source == "staged" and hit.entry is entry
            assert hit.recurrent["h"] is entry.recurrent["h"]
            _expect(hit, n)
        assert threads == []  # nothing copied by the caller
    finally:
        gate.set()
    cache.flush()
    assert threads == [WRITER + "_0"] * 2  # both host copies, on the writer thread
    assert cache.staged_used == 0 and cache.memory_used == both
    assert first.host is not None and more.host is not None
    assert more.host[1][0].tensors["k"] is first.host[1][0].tensors["k"]  # the base's copy reused
    hit = cache.lookup(ids[:71], [70])
    assert hit is not None and hit.source == "memory"
    _expect(hit, 70)
    assert hit.recurrent["h"] is not rec["h"]  # the device copy was let go for the host one
    cache.close()
    if store is not None:
        fresh = _cache(store)
        found = fresh.lookup(ids[:71], [70])
        assert found is not None and found.source == "database"
        _expect(found, 70)
        fresh.close()
        store.close()


def test_a_device_snapshot_short_of_memory_is_taken_on_the_host() -> None:
    cache = _cache(None)
    calls: list[bool] = []

    def take(since: int, device: bool) -> Any:
        calls.append(device)
        if device:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return _parts(5)

    parts, on_device = snapshot(cache, Snapshotter(take, lambda: 80), 0)
    assert calls == [True, False] and not on_device and parts[0]["h"].item() == 5.0
    # An engine without device snapshots (agent/tp_engine.py's leader) is never asked for one.
    calls.clear()
    snapshot(cache, Snapshotter(take, lambda: 80, device=False), 0)
    assert calls == [False]
    cache.close()


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _turns(served: Any, gate: threading.Event | None, kw: dict[str, Any]) -> tuple[Any, Any]:
    """A first turn, then the next one returning to it; with `gate`, both while the prefix writer is
    held (no host copy made, no database write) until the second is answered."""
    first = [{"role": "user", "content": "Say something about main.py"}]
    if gate is not None:
        served.app.state.prefix._writer.submit(gate.wait, 30)
    try:
        a1 = chat(served, first, max_tokens=12, **kw)
        again = [*first, as_history(a1.choices[0].message), {"role": "user", "content": "More, please."}]
        a2 = chat(served, again, max_tokens=12, **kw)
    finally:
        if gate is not None:
            gate.set()
    return a1, a2


@pytest.mark.parametrize("concurrent", [1, 2])  # one at a time on the engine; in a batch
def test_a_returning_request_restores_a_staged_save_exactly(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrent: int
) -> None:
    restored: list[tuple[dict[str, torch.Tensor], list[Page]]] = []
    restore = engine.restore

    def watched(recurrent: dict[str, torch.Tensor], pages: Any) -> None:
        restored.append(({k: v.clone() for k, v in recurrent.items()}, list(pages)))
        restore(recurrent, pages)

    monkeypatch.setattr(engine, "restore", watched)
    opts: dict[str, Any] = {"max_concurrent": concurrent, "gpu_tier_bytes": 0, "join_feed_tokens": 0}
    kw = {"logprobs": True}
    monkeypatch.setenv(STAGE_ENV, "0")  # today's path: the model thread copies the state to the host
    with serving(engine, None, **opts) as plain:
        assert not plain.app.state.prefix.saves_on_device(1)
        p1, p2 = _turns(plain, None, kw)
        assert plain.metric("state_hits_total", tier="memory") == 1
        assert plain.metric("state_saves_staged_total") == 0
    monkeypatch.setenv(STAGE_ENV, "1")
    db = str(tmp_path / "s.db")
    with serving(engine, db, **opts) as served:
        prefix = served.app.state.prefix
        threads = _copies_on(prefix)
        gate = threading.Event()
        a1, a2 = _turns(served, gate, kw)  # answered both while the writer held every host copy
        assert threads == []
        assert served.metric("state_hits_total", tier="staged") == 1
        assert served.metric("state_saves_staged_total") == served.metric("state_saves_total") > 0
        cached = a2.usage.prompt_tokens_details.cached_tokens
        assert cached == p2.usage.prompt_tokens_details.cached_tokens > 0
        prefix.flush()
        assert threads and set(threads) == {WRITER + "_0"}
        assert prefix.staged_used == 0 and prefix.memory_used > 0
        status, text = served.raw("/metrics")
        assert status == 200 and "hybrid_agent_staged_bytes 0.0" in text
        assert "hybrid_agent_host_copy_seconds " in text
    assert_same_answer(a1, p1)
    assert_same_answer(a2, p2)
    if concurrent == 1:  # restored on the engine: the very tensors today's path restores
        assert len(restored) == 2
        (rec_a, pages_a), (rec_b, pages_b) = restored
        assert rec_a.keys() == rec_b.keys() and all(torch.equal(rec_a[k], rec_b[k]) for k in rec_a)
        assert [(p.start, p.end) for p in pages_a] == [(p.start, p.end) for p in pages_b]
        for pa, pb in zip(pages_a, pages_b, strict=True):
            assert all(torch.equal(pa.tensors[k], pb.tensors[k]) for k in pa.tensors)
    # The shutdown flushed every staged save to the database: a restart restores from it.
    with serving(engine, db, **opts) as back:
        b1, b2 = _turns(back, None, kw)
        # Both turns' prompt states (saved one token short of the prompt's end) came back from the database.
        assert back.metric("state_hits_total", tier="database") == 2
        for b, p in ((b1, p1), (b2, p2)):
            assert b.usage.prompt_tokens_details.cached_tokens == p.usage.prompt_tokens - 1
        assert_same_answer(b1, p1)
        assert_same_answer(b2, p2)


def test_an_admissions_save_is_copied_after_the_admission_however_long_its_prefill(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admission holds the writer's copies for a bounded time from its start (agent/serve_tiers.py
    `Copier.hold`); a prefill longer than that bound must not let the copy of the prompt's state, saved
    after it, run beside the rest of the admission (the first token's forward): the hold is renewed."""
    monkeypatch.setenv(STAGE_ENV, "1")
    prefill = engine.prefill

    def slow(ids: Any) -> None:  # the prompt's prefill outlasts the hold; the last token's does not
        time.sleep(0.8 if len(ids) > 1 else 0.1)
        prefill(ids)

    monkeypatch.setattr(engine, "prefill", slow)
    events: list[str] = []
    with serving(engine, None, max_concurrent=1, gpu_tier_bytes=0) as served:
        scheduler, copier = served.app.state.scheduler, served.app.state.prefix._copier
        hold, begin, wait = copier.hold, scheduler.begin, copier._wait
        monkeypatch.setattr(copier, "hold", lambda seconds=0.6: hold(seconds))

        def admitted(*args: Any, **kwargs: Any) -> Any:
            row = begin(*args, **kwargs)
            events.append("admitted")
            return row

        def copying() -> None:  # the writer is let through to its next piece of the copy
            wait()
            events.append("copy")

        monkeypatch.setattr(scheduler, "begin", admitted)
        monkeypatch.setattr(copier, "_wait", copying)
        chat(served, [{"role": "user", "content": "Say something about main.py"}], max_tokens=2)
        served.app.state.prefix.flush()
        assert served.metric("state_saves_staged_total") >= 1
    assert events[0] == "admitted" and "copy" in events


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_staged_save_does_not_hold_up_the_model_thread_and_restores_bit_exact() -> None:
    from hybrid_agent.agent.engine import ModelEngine
    from hybrid_agent.agent.serve_snapshots import of_engine
    from hybrid_agent.model.chat import NativeChatFormat
    from hybrid_agent.model.hybrid import HybridLM
    from hybrid_agent.model.tokenizer import ByteTokenizer
    from test_agent_decode_engine import CFG, greedy

    dev = torch.device("cuda")
    assert not stage_fits(1 << 60, dev, "auto") and stage_fits(1 << 20, dev, "auto")
    assert not stage_fits(1 << 20, dev, "off") and not stage_fits(1 << 20, dev, "auto", held=1 << 60)
    torch.manual_seed(3)
    lm = HybridLM(CFG).eval().to(dev)
    live = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    prompt = torch.randint(0, CFG.vocab_size, (600,)).tolist()
    live.prefill(prompt)
    cache = _cache(None, stage="auto", device="cuda", memory_bytes=1 << 30)
    assert not cache.on_device and cache.saves_on_device(live.state_bytes)
    cache._copier.chunk_bytes = 1 << 16  # many chunks: the copy takes a while
    threads = _copies_on(cache)
    gate = threading.Event()
    cache._writer.submit(gate.wait, 30)
    torch.cuda.set_sync_debug_mode("error")  # the save must not make the model thread wait on the GPU
    try:
        (rec, pages), on_device = snapshot(cache, of_engine(live), 0)
        entry = cache.put(cache.digest(prompt), len(prompt), rec, pages, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_device and entry.staged and entry.host is None and cache.staged_used == entry.size
    rest = greedy(live, [5, 6, 7], 30)  # the first token and on: the copy has not even started
    assert entry.host is None and threads == []
    hit = cache.lookup([*prompt, 5], [len(prompt)])
    assert hit is not None and hit.source == "staged" and hit.entry is entry
    assert any(t.is_cuda for t in hit.recurrent.values())
    resumed = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    resumed.restore(hit.recurrent, hit.pages)
    assert greedy(resumed, [5, 6, 7], 30) == rest
    gate.set()
    cache.flush()
    assert threads == [WRITER + "_0"]
    assert entry.host is not None and cache.staged_used == 0 and cache.memory_used == entry.size
    for dev_t, host_t in zip(hit.recurrent.values(), entry.host[0].values(), strict=True):
        assert host_t.device.type == "cpu" and torch.equal(host_t, dev_t.cpu())  # bit-exact
    for page, host in zip(hit.pages, entry.host[1], strict=True):
        for name, t in page.tensors.items():
            assert torch.equal(host.tensors[name], t.cpu()), name
    again = cache.lookup([*prompt, 5], [len(prompt)])
    assert again is not None and again.source == "memory"
    other = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    other.restore(again.recurrent, again.pages)
    assert greedy(other, [5, 6, 7], 30) == rest
    cache.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("concurrent", [1, 2])
def test_a_cuda_server_without_a_gpu_tier_answers_before_any_host_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrent: int
) -> None:
    """The packaged model on CUDA, no GPU tier: both turns are answered while the prefix writer is held
    (no host copy made at all), the second restored from the first's staged device copy, and each
    answers as the server that copies every save to the host on its model thread."""
    from hybrid_agent.agent.factory import load_engine

    engine = load_engine(None, device="cuda")
    opts: dict[str, Any] = {"max_concurrent": concurrent, "gpu_tier_bytes": 0, "join_feed_tokens": 0}
    kw = {"logprobs": True}
    monkeypatch.setenv(STAGE_ENV, "0")
    with serving(engine, None, **opts) as plain:
        p1, p2 = _turns(plain, None, kw)
        assert plain.metric("state_saves_staged_total") == 0
    monkeypatch.delenv(STAGE_ENV)  # the default: staged on a GPU with room
    with serving(engine, str(tmp_path / "s.db"), **opts) as served:
        prefix = served.app.state.prefix
        assert prefix.device_capacity == 0 and prefix.stage == "auto"
        threads = _copies_on(prefix)
        gate = threading.Event()
        served.app.state.prefix._writer.submit(gate.wait, 60)
        try:
            first = [{"role": "user", "content": "Say something about main.py"}]
            a1 = chat(served, first, max_tokens=12, **kw)
            assert prefix.staged_used > 0 and threads == []  # the device copies wait for the writer
            again = [*first, as_history(a1.choices[0].message), {"role": "user", "content": "More, please."}]
            a2 = chat(served, again, max_tokens=12, **kw)
            assert threads == [] and served.metric("state_hits_total", tier="staged") == 1
        finally:
            gate.set()
        prefix.flush()
        assert prefix.staged_used == 0 and set(threads) == {WRITER + "_0"}
        assert served.metric("state_saves_staged_total") == served.metric("state_saves_total") > 0
    assert_same_answer(a1, p1)
    assert_same_answer(a2, p2)
