"""MLA in the whole model: chunk invariance, absorbed == decompressed, cache size, state round trips."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import ConfigError, HybridConfig, HybridLM, ModelState
from hybrid_agent.model.mla import MLA
from hybrid_agent.model.testing import assert_close, random_sizes, run_in_pieces
from safetensors.torch import load, save

MLA_SIZES = {"n_heads": 4, "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}
STACKS = {
    "mla": ["mla", "mla"],
    "parallel-mla": ["parallel", "parallel"],
    "mixed": ["mamba2", "mla", "gated_deltanet", "parallel", "mlp", "mla"],
}
T = 37  # crosses several SSD / delta-rule chunks of 8, with a ragged tail


@pytest.fixture
def make_mla_model(make_model):
    def make(layer_types: list[str], seed: int = 0, **mla: object) -> HybridLM:
        return make_model(layer_types, seed, mla={**MLA_SIZES, **mla}, parallel_attention="mla")

    return make


def set_absorb(model: HybridLM, absorb: bool | None) -> None:
    for m in model.modules():
        if isinstance(m, MLA):
            m.absorb = absorb


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("window", [None, (5, 2)], ids=["full", "window"])
def test_one_call_equals_chunks_equals_steps(make_mla_model, stack, window):
    model = make_mla_model(STACKS[stack])
    assert any(isinstance(m, MLA) for m in model.modules())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)
    kw = {} if window is None else {"window": window[0], "sinks": window[1]}
    whole, _ = run_in_pieces(model, ids, [T], **kw)  # decompressed (auto mode, long prefill)
    assert_close(whole, run_in_pieces(model, ids, random_sizes(T, gen), **kw)[0])
    steps, state = run_in_pieces(model, ids, [1] * T, **kw)  # absorbed (auto mode, decode)
    assert_close(whole, steps)
    if window is not None:
        for i, kind in enumerate(model.config.layer_types):
            if kind in ("mla", "parallel"):
                assert state.layers[i].pos is not None
                assert state.layers[i].pos.tolist() == [0, 1, *range(T - 5, T)]


@pytest.mark.parametrize("window", [None, 6])
def test_absorbed_decode_equals_decompressed_decode(make_mla_model, window):
    model = make_mla_model(STACKS["mixed"], q_lora_rank=8)
    ids = torch.randint(0, model.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    outs = []
    for absorb in (True, False):
        set_absorb(model, absorb)
        outs.append(run_in_pieces(model, ids, [9] + [1] * 21, window=window, sinks=2)[0])
    set_absorb(model, None)
    assert_close(outs[0], outs[1], rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_per_token_are_latent_plus_rope_key(make_mla_model, dtype):
    model = make_mla_model(["mla", "mamba2", "parallel"], kv_lora_rank=24, qk_rope_head_dim=6).to(dtype)
    state = model.new_state()
    ids = torch.randint(0, model.config.vocab_size, (1, 17), generator=torch.Generator().manual_seed(3))
    model(ids[:, :10], state)
    before, cache_before = state.nbytes, state.cache_range(0, 10**9)
    model(ids[:, 10:], state)
    new = 7
    cache_after = state.cache_range(0, 10**9)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    per_layer = (24 + 6) * itemsize  # (kv_lora_rank + qk_rope_head_dim) x dtype size
    for i in (0, 2):  # the MLA layer and the parallel block's MLA branch
        grew = sum(
            cache_after[f"layers.{i}.{n}"].nbytes - cache_before[f"layers.{i}.{n}"].nbytes
            for n in ("latent", "k_rope")
        )
        assert grew == new * per_layer
        assert cache_after[f"layers.{i}.latent"].dtype == dtype
    # The whole state grows by exactly that, plus the int64 position of each cached token.
    assert state.nbytes - before == new * 2 * (per_layer + 8)


@pytest.mark.parametrize("window", [None, 6])
def test_round_trip_through_safetensors_then_continue(make_mla_model, window):
    model = make_mla_model(STACKS["mixed"])
    ids = torch.randint(0, model.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(4))
    live = model.new_state(window=window, sinks=2)
    logits = model(ids, live)
    restored = ModelState.from_tensors(load(save(live.to_tensors())), model.config)
    assert {n for n in restored.to_tensors() if n.startswith("layers.1.")} == {
        "layers.1.latent", "layers.1.k_rope", "layers.1.pos",
    }  # fmt: skip
    for name, t in live.to_tensors().items():
        assert torch.equal(restored.to_tensors()[name], t), name
    tok = logits[:, -1:].argmax(-1)  # (1, 1)
    for _ in range(12):  # greedy decode both: bit-identical logits
        a, b = model(tok, live), model(tok, restored)
        assert torch.equal(a, b)
        tok = a[:, -1:].argmax(-1)


@pytest.mark.parametrize("window", [None, 5])
def test_from_parts_rebuilds_the_latent_cache(make_mla_model, window):
    model = make_mla_model(STACKS["mixed"])
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(5))
    state = model.new_state(window=window, sinks=2)
    pages, last = [], 0
    for cut in (7, 19, 20, 33):  # turn by turn, saving the new pages after each (what the agent does)
        state.keep_from = last
        model(ids[:, last:cut], state)
        pages.append((last, cut, state.cache_range(last, cut)))
        last = cut
    state.keep_from = None
    assert set(pages[0][2]) == {f"layers.{i}.{n}" for i in (1, 3, 5) for n in ("latent", "k_rope", "pos")}
    recurrent = {k: v.clone() for k, v in state.recurrent_tensors().items()}
    assert not any(k.endswith((".latent", ".k_rope")) for k in recurrent)
    if window is not None:
        pages = [p for p in pages if p[0] < 2 or p[1] > 33 - window]  # only sinks + window are needed
        for i in range(len(state.layers)):
            state.evict(i)  # drop what keep_from held; the window alone decides
    rebuilt = ModelState.from_parts(recurrent, pages, model.config, window=window, sinks=2)
    assert torch.equal(model(ids[:, 33:], rebuilt), model(ids[:, 33:], state))


def test_bad_mla_config_says_what_to_fix():
    with pytest.raises(ConfigError, match="must be even"):
        HybridConfig(vocab_size=10, d_model=32, layer_types=["mla"], mla={"qk_rope_head_dim": 3})
    cfg = HybridConfig(vocab_size=10, d_model=512, layer_types=["mla"])
    m = cfg.mla  # derived defaults follow DeepSeek's ratios
    sizes = (m.n_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank)
    assert sizes == (8, 64, 32, 64, 256)
    assert HybridConfig.model_validate_json(cfg.to_json()) == cfg
