"""The unmasked causal path of a prefill chunk (model/ops.py `causal_sdpa`, chosen by `Ops.plain_causal`)
computes what the masked path computes, and is chosen only where the host knows the attention is plain
causal over keys 0..L-1: never under a window, for MLA, for a one-token step, or for a cache whose
positions are not known on the host to be in order. CUDA-only in the model; here it is forced onto the
CPU (`causal_devices=("cpu",)`) with SDPA's math backend, against the mask path's own call."""

from __future__ import annotations

import math

import pytest
import torch
from hybrid_agent.model import ops as ops_mod
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.ops import CAUSAL_PREFILL_ENV, Ops, causal_sdpa, sdpa, visible
from hybrid_agent.model.state import ModelState
from hybrid_agent.model.testing import assert_close, tiny_model
from torch.nn.attention import SDPBackend, sdpa_kernel

CPU_CAUSAL = {"causal_prefill": True, "causal_devices": ("cpu",)}


def masked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ops.attend's masked call: q (B, H, T, Dh) as G*T rows per KV head, `visible` repeated G times."""
    B, H, T, Dh = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    G = H // Hkv
    mask = visible(torch.arange(L - T, L), torch.arange(L), None, 0).repeat(G, 1)  # (G*T, L)
    out = sdpa(q.reshape(B, Hkv, G * T, Dh), k, v, mask, 1.0 / math.sqrt(Dh))  # (B, Hkv, G*T, Dh)
    return out.reshape(B, H, T, Dh)


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("Dh", [64, 128, 256])
@pytest.mark.parametrize("T, L", [(9, 9), (6, 15)], ids=["first-chunk", "second-chunk"])
def test_causal_sdpa_equals_the_masked_call(G: int, Dh: int, T: int, L: int) -> None:
    gen = torch.Generator().manual_seed(G * 1000 + Dh + L)
    B, Hkv = 2, 2
    q = torch.randn(B, Hkv * G, T, Dh, generator=gen)
    k, v = (torch.randn(B, Hkv, L, Dh, generator=gen) for _ in range(2))
    with sdpa_kernel([SDPBackend.MATH]):
        got = causal_sdpa(q, k, v, 1.0 / math.sqrt(Dh))
        want = masked_reference(q, k, v)
    assert got.shape == (B, Hkv * G, T, Dh)
    assert_close(want, got, rel=1e-5)


class Spy:
    """Counts the calls of the real `causal_sdpa` (it still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        real = ops_mod.causal_sdpa

        def counted(q, k, v, scale):
            self.calls.append((q.shape[-2], k.shape[-2]))
            return real(q, k, v, scale)

        monkeypatch.setattr(ops_mod, "causal_sdpa", counted)


def run(model, ids, sizes, state, **ops_kw) -> torch.Tensor:
    out, start = [], 0
    for n in sizes:
        out.append(model(ids[:, start : start + n], state, Ops(**ops_kw)))
        start += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["G1", "G2", "G4"])
@pytest.mark.parametrize("gate", [False, True], ids=["plain", "gated"])
def test_model_prefill_through_the_causal_path(monkeypatch, heads, gate) -> None:
    """Chunks of 10, 7, 1, 5 tokens: the first (L == T) and later chunks (L > T) take the causal path,
    the one-token call does not; the logits equal the mask path's, and so does the state."""
    attn = {"n_heads": heads[0], "n_kv_heads": heads[1], "head_dim": 8, "output_gate": gate}
    model = tiny_model(["attention", "gated_deltanet", "attention"], attention=attn)
    ids = torch.randint(0, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(3))
    sizes = [10, 7, 1, 5]
    spy = Spy(monkeypatch)
    with sdpa_kernel([SDPBackend.MATH]):
        want_state, got_state = model.new_state(2), model.new_state(2)
        want = run(model, ids, sizes, want_state, causal_prefill=False)
        assert spy.calls == []
        got = run(model, ids, sizes, got_state, **CPU_CAUSAL)
    assert spy.calls == [(10, 10)] * 2 + [(7, 17)] * 2 + [(5, 23)] * 2
    assert_close(want, got, rel=1e-5)
    for a, b in zip(want_state.layers, got_state.layers, strict=True):
        for name, t in a.cache.items():
            assert_close(t, b.cache[name], rel=1e-5)
        assert b.pos is None or (b.dense and torch.equal(b.pos, torch.arange(23)))


def test_window_sinks_and_mla_keep_the_mask(monkeypatch) -> None:
    spy = Spy(monkeypatch)
    model = tiny_model(["attention", "mlp"])
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    for kw in ({"window": 6, "sinks": 2}, {"window": 6}):
        want = run(model, ids, [12, 8], model.new_state(window=kw["window"], sinks=kw.get("sinks", 0)))
        state = model.new_state(window=kw["window"], sinks=kw.get("sinks", 0))
        assert_close(want, run(model, ids, [12, 8], state, **CPU_CAUSAL), rel=1e-6)
    mla = tiny_model(["mla", "mlp"])
    run(mla, ids, [12, 8], mla.new_state(), **CPU_CAUSAL)
    assert spy.calls == []


def test_decode_steps_keep_their_call(monkeypatch) -> None:
    spy = Spy(monkeypatch)
    model = tiny_model(["attention"])
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(5))
    run(model, ids, [1] * 6, model.new_state(), **CPU_CAUSAL)
    assert spy.calls == []


def test_only_host_known_in_order_caches_qualify(monkeypatch) -> None:
    """A cache loaded with positions out of order, or with positions on another device than the host's
    reach, is not known to be 0..L-1: the mask stays. Pages (from_parts) and in-order host tensors are."""
    spy = Spy(monkeypatch)
    model = tiny_model(["attention", "gated_deltanet"])
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(6))
    state = model.new_state()
    run(model, ids, [10], state)
    saved = state.to_tensors()
    assert ModelState.from_tensors(saved, model.config).layers[0].dense
    parts = ModelState.from_parts(
        state.recurrent_tensors(), [(0, 10, state.cache_range(0, 10))], model.config
    )
    assert parts.layers[0].dense and parts.clone().layers[0].dense
    shuffled = dict(saved)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shuffled["layers.0.pos"] = saved["layers.0.pos"][order]
    for name in ("k", "v"):
        shuffled[f"layers.0.{name}"] = saved[f"layers.0.{name}"][:, :, order]
    odd = ModelState.from_tensors(shuffled, model.config)
    assert not odd.layers[0].dense
    want = run(model, ids[:, 10:], [6], ModelState.from_tensors(saved, model.config))
    assert spy.calls == []
    got_odd = run(model, ids[:, 10:], [6], odd, **CPU_CAUSAL)
    assert spy.calls == []  # the shuffled cache keeps its mask, and the mask gives the same logits
    assert_close(want, got_odd, rel=1e-5)
    got = run(model, ids[:, 10:], [6], parts, **CPU_CAUSAL)
    assert spy.calls == [(6, 16)]
    assert_close(want, got, rel=1e-5)


def test_positions_not_its_own_keep_the_mask() -> None:
    model = tiny_model(["attention"])
    state = model.new_state()
    ops = Ops(**CPU_CAUSAL)
    ops.begin()
    own = ops.positions(state, 4, torch.device("cpu"))
    layer = state.layers[0]
    state.append_cache(layer, {"k": torch.zeros(1, 2, 4, 8), "v": torch.zeros(1, 2, 4, 8)}, own, 0)
    assert layer.dense and ops.plain_causal(layer, state, own)
    assert not ops.plain_causal(layer, state, torch.arange(4))  # the same numbers, not known as such
    assert not ops.plain_causal(layer, state, own[:1])  # one query
    other = model.new_state()
    other.layers[0].append(
        {"k": torch.zeros(1, 2, 4, 8), "v": torch.zeros(1, 2, 4, 8)}, own, capacity_limit=None
    )
    assert not other.layers[0].dense  # appended without the host knowing where the positions start


def test_switch_and_device_choice(monkeypatch) -> None:
    monkeypatch.delenv(CAUSAL_PREFILL_ENV, raising=False)
    assert Ops().causal_prefill and Ops().causal_devices == {"cuda"}  # on: faster on the H100
    monkeypatch.setenv(CAUSAL_PREFILL_ENV, "1")
    assert Ops().causal_prefill
    monkeypatch.setenv(CAUSAL_PREFILL_ENV, "0")
    assert not Ops().causal_prefill and Ops(causal_prefill=True).causal_prefill
    spy = Spy(monkeypatch)
    model = tiny_model(["attention"])
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(7))
    run(model, ids, [8], model.new_state(), causal_prefill=True)  # on for CUDA only: the CPU keeps the mask
    assert spy.calls == []


def test_engine_buffers_stay_dense() -> None:
    """The engine's caches hold position p in slot p through prefill, steps, reset and loads."""
    model = tiny_model(["attention", "gated_deltanet"])
    engine = DecodeEngine(model, max_context=64)
    engine.prefill(list(range(1, 12)))
    engine.step(3)
    engine.prefill(list(range(20, 25)))
    assert all(ls.dense for ls in engine.state.layers)
    assert torch.equal(engine.state.layers[0].pos, torch.arange(17))
    saved = engine.export_state()
    engine.reset()
    engine.load_state(saved)
    assert all(ls.dense for ls in engine.state.layers)
