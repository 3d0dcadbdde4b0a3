"""DecodeEngine.load_parts: a snapshot (recurrent tensors + cache pages) copied straight into the engine's
buffers gives exactly what `load_state(ModelState.from_parts(...))` gives (same state bit for bit, same
logits, same greedy tokens), without concatenating the cache; a bad snapshot is refused with the same
error type and leaves the engine as it was."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hybrid_agent.model import HybridLM, ModelState, Page
from hybrid_agent.model.decode.engine import ContextFullError, DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.testing import TINY, tiny_model
from torch import Tensor

MLA = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4}
LAYOUTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "static": (["gated_deltanet", "attention", "mamba2", "mlp", "attention"], {}),
    "mla": (["mla", "gated_deltanet"], {"mla": MLA}),  # latent cache: token axis 1, not 2
    "parallel": (["parallel", "attention"], {}),  # not graphable: the engine's eager path, same buffers
}
N = 29  # tokens in the snapshot
CUTS = [0, 7, 8, 20, N]  # page boundaries (a one-token page among them)


def make(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> HybridLM:
    layers, over = LAYOUTS[name]
    return tiny_model(layers, seed, **over).to(dtype)


def snapshot(model: HybridLM, n: int = N, seed: int = 1) -> tuple[dict[str, Tensor], ModelState, Tensor]:
    """A state after n random tokens, its recurrent tensors, and the tokens."""
    ids = torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))
    state = model.new_state()
    prefill(model, ids, state, chunk_size=8)
    return state.recurrent_tensors(), state, ids


def pages_of(state: ModelState, cuts: list[int] = CUTS) -> list[tuple[int, int, dict[str, Tensor]]]:
    return [(a, b, state.cache_range(a, b)) for a, b in itertools.pairwise(cuts)]


def engine_tensors(e: DecodeEngine) -> dict[str, Tensor]:
    """Everything the engine holds: the state's tensors and the whole buffers (room past n included)."""
    out = {k: v.clone() for k, v in e.state.to_tensors().items()}
    for i, ls in enumerate(e.state.layers):
        out.update({f"storage.{i}.{k}": v.clone() for k, v in ls.storage.items()})
    out["n"] = torch.tensor(e.n_tokens)
    return out


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def via_from_parts(
    model: HybridLM, rec: dict[str, Tensor], pages: list[Any], max_context: int = 64
) -> DecodeEngine:
    e = DecodeEngine(model, max_context=max_context, prefill_chunk=8)
    e.load_state(ModelState.from_parts(rec, pages, model.config))
    return e


def dirty_engine(model: HybridLM, max_context: int = 64) -> DecodeEngine:
    """An engine that already holds another, longer session: load_parts must not depend on a clean one."""
    e = DecodeEngine(model, max_context=max_context, prefill_chunk=8)
    e.prefill(torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(99)))
    return e


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_load_parts_equals_from_parts_then_load_state(name: str) -> None:
    model = make(name)
    rec, state, ids = snapshot(model)
    pages = pages_of(state)
    want = via_from_parts(model, rec, pages)
    got = dirty_engine(model)
    shuffled = list(pages)
    random.Random(0).shuffle(shuffled)  # from_parts sorts pages by start; so does load_parts
    got.load_parts(rec, shuffled)
    assert got.n_tokens == got.state.n_tokens == N
    assert_same(got.state.to_tensors(), want.state.to_tensors())
    # ... and the state is the one the prefill built (nothing lost or reordered on the way).
    for k, t in state.to_tensors().items():
        assert torch.equal(got.state.to_tensors()[k], t), k
    # Identical next logits and greedy continuation, and the same as the session that never stopped.
    straight = DecodeEngine(model, max_context=64, prefill_chunk=8)
    straight.prefill(ids)
    tok = int(straight.step(5).argmax())
    for e in (got, want):
        assert torch.equal(e.step(5), straight._logits)
    cont = straight.generate_greedy(12, sync_every=4)
    assert got.generate_greedy(12, sync_every=4) == want.generate_greedy(12, sync_every=4) == cont
    assert tok == cont[0]


def test_page_forms_and_dtype_conversion() -> None:
    """The model's Page (what the store loads and the agent passes) and plain tuples are both pages;
    fp32 pages into a bf16 engine convert as load_state converts them."""
    model = make("static", seed=2, dtype=torch.bfloat16)
    rec, state, _ = snapshot(model, seed=3)
    tuples = pages_of(state)
    want = via_from_parts(model, rec, tuples)
    for pages in (
        [Page(a, b, t) for a, b, t in tuples],
        [(a, b, {k: v.float() if v.is_floating_point() else v for k, v in t.items()}) for a, b, t in tuples],
    ):
        e = DecodeEngine(model, max_context=40)
        e.load_parts(rec, pages)
        assert e.state.layers[1].cache["k"].dtype == torch.bfloat16
        assert_same(e.state.to_tensors(), want.state.to_tensors())


def test_overlapping_and_scattered_pages_pick_what_from_parts_picks() -> None:
    """Where several pages hold a position, from_parts takes the page with the smallest start (then the
    earliest entry); pages holding scattered or reversed positions are gathered. Same result here."""
    model = make("static", seed=4)
    rec, state, _ = snapshot(model, seed=5)
    full = state.cache_range(0, N)

    def page(positions: list[int], scale: float) -> dict[str, Tensor]:
        idx = torch.tensor(positions)
        out = {}
        for k, t in full.items():
            if k.endswith(".pos"):
                out[k] = t[idx]
            else:  # distinct values per page, so a wrong pick shows
                out[k] = t.index_select(2, idx) * scale
        return out

    cases = [
        # overlapping contiguous pages
        [(0, 12, page(list(range(0, 12)), 1.0)), (6, 20, page(list(range(6, 20)), 2.0)),
         (15, N, page(list(range(15, N)), 3.0))],
        # even positions first, then everything (odd ones from the second: 14 runs -> gathered)
        [(0, N, page(list(range(0, N, 2)), 1.0)), (1, N, page(list(range(N)), -1.0))],
        # one page with its positions reversed, one with extra positions past n_tokens (ignored)
        [(0, 10, page(list(range(9, -1, -1)), 0.5)), (10, N, page(list(range(10, N)), 1.5))],
        # equal starts: the order given decides, as in from_parts' stable sort
        [(0, N, page(list(range(N)), 4.0)), (0, N, page(list(range(N)), 5.0))],
    ]  # fmt: skip
    for pages in cases:
        want = via_from_parts(model, rec, pages)
        got = dirty_engine(model)
        got.load_parts(rec, pages)
        assert_same(got.state.to_tensors(), want.state.to_tensors())
        assert torch.equal(got.step(3), want.step(3))


def test_no_concatenated_cache_and_each_token_copied_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of load_parts: no torch.cat and no gather of cache tensors (only of positions, 8 bytes a
    token), and the cache bytes copied are exactly the state's: one copy per tensor per page."""
    model = make("static", seed=6)
    rec, state, _ = snapshot(model, seed=7)
    pages = pages_of(state)
    e = dirty_engine(model)
    real_cat, real_select, real_copy = torch.cat, torch.Tensor.index_select, torch.Tensor.copy_
    copies: list[tuple[int, int]] = []  # (source numel, data_ptr of the destination's buffer)

    def cat(tensors: Any, *a: Any, **k: Any) -> Tensor:
        if any(t.is_floating_point() for t in tensors):
            raise AssertionError("load_parts concatenated cache tensors")
        return real_cat(tensors, *a, **k)

    def select(self: Tensor, *a: Any, **k: Any) -> Tensor:
        if self.is_floating_point():
            raise AssertionError("load_parts gathered a cache tensor")
        return real_select(self, *a, **k)

    def copy(self: Tensor, src: Tensor, *a: Any, **k: Any) -> Tensor:
        if src.is_floating_point():
            copies.append((src.numel(), self.untyped_storage().data_ptr()))
        return real_copy(self, src, *a, **k)

    monkeypatch.setattr(torch, "cat", cat)
    monkeypatch.setattr(torch.Tensor, "index_select", select)
    monkeypatch.setattr(torch.Tensor, "copy_", copy)
    e.load_parts(rec, pages)
    monkeypatch.undo()
    # The checks are live: the same patches make from_parts fail.
    monkeypatch.setattr(torch, "cat", cat)
    with pytest.raises(AssertionError, match="concatenated"):
        ModelState.from_parts(rec, pages, model.config)
    monkeypatch.undo()

    cache_bufs = {ls.storage[n].untyped_storage().data_ptr(): n for ls in e.state.layers for n in ls.cache}
    cache_copies = [c for c in copies if c[1] in cache_bufs]
    att = model.config.attention
    n_pages, n_attn, per_token = len(pages), 2, att.n_kv_heads * att.head_dim  # of k, and of v
    assert len(cache_copies) == n_pages * n_attn * 2  # one per page, layer and tensor
    assert sum(c[0] for c in cache_copies) == N * n_attn * 2 * per_token  # every token exactly once
    rec_numel = sum(t.numel() for k, t in rec.items() if k.startswith("layers."))
    assert sum(c[0] for c in copies if c[1] not in cache_bufs) == rec_numel
    assert_same(e.state.to_tensors(), via_from_parts(model, rec, pages).state.to_tensors())


def _drop(pages: list[Any], j: int) -> list[Any]:
    return pages[:j] + pages[j + 1 :]


def _edit_page(pages: list[Any], j: int, fn: Callable[[dict[str, Tensor]], None]) -> list[Any]:
    out = [(a, b, dict(t)) for a, b, t in pages]
    fn(out[j][2])
    return out


def _edit_all(pages: list[Any], fn: Callable[[dict[str, Tensor]], None]) -> list[Any]:
    out = [(a, b, dict(t)) for a, b, t in pages]
    for _, _, t in out:
        fn(t)
    return out


def _with(rec: dict[str, Tensor], **kv: Tensor) -> dict[str, Tensor]:
    return {**rec, **kv}


def _without(rec: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    return {k: v for k, v in rec.items() if k != key}


def _batch2(rec: dict[str, Tensor], pages: list[Any]) -> tuple[dict[str, Tensor], list[Any]]:
    def b2(t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            k: v if k.endswith(".pos") or not k.startswith("layers.") else torch.cat([v, v])
            for k, v in t.items()
        }

    return b2(rec), [(a, b, b2(t)) for a, b, t in pages]


Snap = tuple[dict[str, Tensor], list[Any]]


def _pop(*keys: str) -> Callable[[dict[str, Tensor]], None]:
    return lambda t: [t.pop(k) for k in keys] and None


def _cut(key: str, index: Any) -> Callable[[dict[str, Tensor]], None]:
    return lambda t: t.update({key: t[key][index]})


def _pages(fn: Callable[[list[Any]], list[Any]]) -> Callable[[dict[str, Tensor], list[Any]], Snap]:
    return lambda r, p: (r, fn(p))


def _rec(
    fn: Callable[[dict[str, Tensor]], dict[str, Tensor]],
) -> Callable[[dict[str, Tensor], list[Any]], Snap]:
    return lambda r, p: (fn(r), p)


# (name, bad snapshot from (rec, pages), error, whether from_parts + load_state refuses it the same way)
BAD: list[tuple[str, Callable[[dict[str, Tensor], list[Any]], Snap], type, bool]] = [
    ("gap", _pages(lambda p: _drop(p, 2)), StateMismatchError, True),
    ("no first page", _pages(lambda p: _drop(p, 0)), StateMismatchError, True),
    ("no last page", _pages(lambda p: _drop(p, len(p) - 1)), StateMismatchError, True),
    ("no pages", _pages(lambda p: []), StateMismatchError, True),
    # only the last attention layer misses a page: found late in validation, nothing written before
    ("gap in the last layer only",
     _pages(lambda p: _edit_page(p, 1, _pop("layers.4.k", "layers.4.v", "layers.4.pos"))),
     StateMismatchError, True),
    ("head dim", _pages(lambda p: _edit_all(p, _cut("layers.4.k", (..., slice(0, 4))))),
     StateMismatchError, True),
    ("kv heads", _pages(lambda p: _edit_all(p, _cut("layers.1.v", (slice(None), slice(0, 1))))),
     StateMismatchError, True),
    # from_parts: torch.cat's RuntimeError for the next four (or a KeyError): not the same type there
    ("one page's shape", _pages(lambda p: _edit_page(p, 3, _cut("layers.4.k", (..., slice(0, 4))))),
     StateMismatchError, False),
    ("tokens vs pos",
     _pages(lambda p: _edit_page(p, 0, _cut("layers.1.k", (slice(None), slice(None), slice(1, None))))),
     StateMismatchError, False),
    ("page lacks v", _pages(lambda p: _edit_page(p, 1, _pop("layers.4.v"))), StateMismatchError, False),
    ("float positions",
     _pages(lambda p: _edit_page(p, 0, lambda t: t.update({"layers.1.pos": t["layers.1.pos"] * 1.0}))),
     StateMismatchError, False),
    ("not a page", _pages(lambda p: [*p[:2], {"start": 8}]), StateMismatchError, False),
    ("no n_tokens", _rec(lambda r: _without(r, "n_tokens")), StateMismatchError, True),
    ("missing recurrent", _rec(lambda r: _without(r, "layers.2.ssm")), StateMismatchError, True),
    ("unexpected tensor", _rec(lambda r: _with(r, **{"layers.3.ssm": r["layers.2.ssm"]})),
     StateMismatchError, True),
    ("recurrent shape", _rec(lambda r: _with(r, **{"layers.0.recurrent": r["layers.0.recurrent"][:, :2]})),
     StateMismatchError, True),
    ("integer recurrent", _rec(lambda r: _with(r, **{"layers.2.conv": r["layers.2.conv"].long()})),
     StateMismatchError, False),
    ("batch 2", _batch2, StateMismatchError, True),
    # from_parts(window=None) would load it as full attention
    ("saved under a window", _rec(lambda r: _with(r, window=torch.tensor(8), sinks=torch.tensor(2))),
     StateMismatchError, False),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_snapshots_are_refused_and_leave_the_engine_unchanged(case: tuple[str, Any, type, bool]) -> None:
    _, spoil, error, from_parts_too = case
    model = make("static", seed=8)
    rec, state, _ = snapshot(model, seed=9)
    bad_rec, bad_pages = spoil(rec, pages_of(state))
    e = dirty_engine(model)
    before = engine_tensors(e)
    with pytest.raises(error):
        e.check_parts(bad_rec, bad_pages)
    with pytest.raises(error):
        e.load_parts(bad_rec, bad_pages)
    assert_same(engine_tensors(e), before)
    if from_parts_too:
        with pytest.raises(error):
            DecodeEngine(model, max_context=64).load_state(
                ModelState.from_parts(bad_rec, bad_pages, model.config)
            )
    # The engine still works from where it was, and a good snapshot loads afterwards.
    e.load_parts(rec, pages_of(state))
    assert_same(e.state.to_tensors(), state.to_tensors())


def test_context_full_is_refused_before_any_write() -> None:
    model = make("static", seed=10)
    rec, state, _ = snapshot(model, seed=11)
    e = DecodeEngine(model, max_context=N - 1)
    e.prefill(torch.arange(10).view(1, -1))
    before = engine_tensors(e)
    with pytest.raises(ContextFullError, match=f"max_context={N - 1}"):
        e.load_parts(rec, pages_of(state))
    assert_same(engine_tensors(e), before)
    with pytest.raises(ContextFullError):  # what the old path says for the same snapshot
        e.load_state(ModelState.from_parts(rec, pages_of(state), model.config))
    assert e.check_parts(rec, pages_of(state)) == N  # validation alone does not need the room


def test_windowed_sessions_are_refused_clearly() -> None:
    """The engine keeps full attention only (its `static` rule: no window), so a snapshot of a windowed
    session, with the sinks + window pages the store loads for it, is refused with a message that says
    so; a model whose config has a window gets the same answer."""
    model = make("static", seed=12)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(13))
    state = model.new_state(window=8, sinks=2)
    state.keep_from = 0  # keep every token, as the agent does between snapshots
    prefill(model, ids, state, chunk_size=8)
    rec = state.recurrent_tensors()
    assert int(rec["window"]) == 8
    sinks_and_window = [(0, 8, state.cache_range(0, 8)), (30, 40, state.cache_range(30, 40))]
    every_page = pages_of(state, [0, 8, 30, 40])
    e = dirty_engine(model)
    before = engine_tensors(e)
    for pages in (sinks_and_window, every_page):
        with pytest.raises(StateMismatchError, match=r"window of 8 tokens.*full attention only"):
            e.load_parts(rec, pages)
    assert_same(engine_tensors(e), before)

    windowed = tiny_model(LAYOUTS["static"][0], attention={**TINY["attention"], "sliding_window": 8})
    we = DecodeEngine(windowed, max_context=64)
    assert not we.static  # the engine's own rule: a window is not static
    w_state = windowed.new_state()
    prefill(windowed, ids, w_state, chunk_size=8)
    with pytest.raises(StateMismatchError, match="full attention only"):
        we.load_parts(w_state.recurrent_tensors(), pages_of(w_state, [0, 40]))
    assert we.n_tokens == 0


def test_empty_and_attention_free_snapshots() -> None:
    model = make("static", seed=14)
    rec = model.new_state().recurrent_tensors()
    e = dirty_engine(model)
    e.load_parts(rec, [])
    assert e.n_tokens == 0
    fresh = DecodeEngine(model, max_context=64)
    assert_same(e.state.to_tensors(), fresh.state.to_tensors())

    rnn = tiny_model(["mamba2", "gated_deltanet", "mlp"], seed=15)
    cfg = rnn.config
    st = rnn.new_state()
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(16))
    prefill(rnn, ids, st, chunk_size=8)
    a, b = DecodeEngine(rnn, max_context=32), DecodeEngine(rnn, max_context=32)
    a.load_parts(st.recurrent_tensors(), [])
    b.load_state(ModelState.from_parts(st.recurrent_tensors(), [], cfg))
    assert a.n_tokens == 20
    assert_same(a.state.to_tensors(), b.state.to_tensors())
    assert torch.equal(a.step(1), b.step(1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_no_temporary_cache_copy() -> None:
    """On the GPU: pages on the device (as the store loads them) or on the host go straight into the
    buffers; the allocator's peak during load_parts stays far below the cache's size, where
    from_parts + load_state allocates more than the whole cache again (concatenation, gather, clone)."""
    att = {"n_heads": 8, "n_kv_heads": 4, "head_dim": 64}
    model = tiny_model(LAYOUTS["static"][0], seed=17, d_model=256, attention=att).to("cuda")
    n, cuts = 8192, [0, 2048, 4096, 6144, 8192]
    src = DecodeEngine(model, max_context=n + 64, prefill_chunk=2048)
    src.prefill(torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(18)).cuda())
    rec = src.state.recurrent_tensors()
    pages = pages_of(src.state, cuts)  # on the GPU
    cache_bytes = sum(t.nbytes for _, _, p in pages for k, t in p.items() if not k.endswith(".pos"))
    assert cache_bytes >= 32 * 2**20

    def peak(fn: Callable[[], object]) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    got = DecodeEngine(model, max_context=n + 64)
    want = DecodeEngine(model, max_context=n + 64)
    direct = peak(lambda: got.load_parts(rec, pages))
    assembled = peak(lambda: want.load_state(ModelState.from_parts(rec, pages, model.config)))
    assert direct < cache_bytes / 16 and assembled > cache_bytes, (direct, assembled, cache_bytes)
    assert_same(got.state.to_tensors(), want.state.to_tensors())
    assert_same(got.state.to_tensors(), src.state.to_tensors())
    host = DecodeEngine(model, max_context=n + 64)
    host.load_parts(
        {k: v.cpu() for k, v in rec.items()},
        [(a, b, {k: v.cpu() for k, v in p.items()}) for a, b, p in pages],
    )
    assert_same(host.state.to_tensors(), want.state.to_tensors())
    # Two engines' graphs over the same state: equal up to cuBLAS' choices at capture (in practice equal).
    torch.testing.assert_close(got.step(7), src.step(7), rtol=1e-5, atol=1e-5)
    assert got.generate_greedy(16) == src.generate_greedy(16)
