"""DecodeEngine on the CPU: its segmented static step (the code the CUDA graphs capture) and its eager
fallback produce exactly what `model(token, state)` produces, token for token and logit for logit."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridLM
from hybrid_agent.model.decode.engine import ContextFullError, DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.testing import TINY
from hybrid_agent.model.testing import tiny_model as make

STATIC = ["gated_deltanet", "attention", "mamba2", "mlp", "attention"]
# A mixture of experts in the first and last layers' MLPs (model/moe.py), with a gated shared expert.
MOE = {"n_experts": 8, "top_k": 2, "hidden_dim": 32, "shared_hidden_dim": 48, "shared_gate": True,
       "layers": [0, 2]}  # fmt: skip
KDA_CFG = {"n_heads": 2, "head_dim": 8, "chunk_size": 4}  # Kimi delta attention, several chunks a prefill


def eager_greedy(model: HybridLM, prompt: torch.Tensor, n: int) -> tuple[list[int], list[torch.Tensor]]:
    state = model.new_state()
    logits = prefill(model, prompt, state, chunk_size=8)
    tokens, all_logits = [], [logits.clone()]
    for _ in range(n):
        tok = int(logits.argmax(-1))
        tokens.append(tok)
        logits = model(torch.tensor([[tok]]), state)[:, -1]
        all_logits.append(logits.clone())
    return tokens, all_logits


@pytest.mark.parametrize(
    "layers, over",
    [
        (STATIC, {}),
        (["attention", "gated_deltanet"], {"attention": {**TINY["attention"], "qk_norm": "full",
                                                          "norm_position": "post", "rope_theta": None}}),
        (["attention", "mamba2"], {"attention": {**TINY["attention"], "qk_norm": "head"}}),
        (["attention", "gated_deltanet"], {"attention": {**TINY["attention"], "qk_norm": "head",
                                                          "output_gate": True, "rope_fraction": 0.25}}),
        (["parallel", "attention"], {}),  # not graphable: the eager fallback
        (["gated_deltanet", "attention", "mlp"], {"moe": MOE}),
        (["mla", "gated_deltanet"], {"mla": {"kv_lora_rank": 16, "qk_rope_head_dim": 4,
                                             "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4}}),
        (["kda", "mla", "kda"], {"kda": KDA_CFG, "mla": {"kv_lora_rank": 16, "qk_rope_head_dim": 4,
                                 "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4, "rope_theta": None}}),
    ],
)  # fmt: skip
def test_greedy_matches_model_forward(layers: list[str], over: dict) -> None:
    model = make(layers, **over)
    prompt = torch.randint(0, 97, (1, 21), generator=torch.Generator().manual_seed(1))
    want, want_logits = eager_greedy(model, prompt, 24)
    engine = DecodeEngine(model, max_context=64, prefill_chunk=8)
    assert engine.static == (set(layers) <= {"attention", "gated_deltanet", "mamba2", "mlp", "mla", "kda"})
    assert not engine.graphed  # CPU: no graphs
    first = engine.prefill(prompt)
    assert torch.equal(first, want_logits[0])
    got = engine.generate_greedy(24, sync_every=5)
    assert got == want
    assert engine.n_tokens == engine.state.n_tokens == 21 + 24

    # The engine's state is the eager one: same tensors after the same tokens. The reference here is a
    # chunked prefill, the engine stepped token by token: fp32 in two summation orders, ~2.5e-6 of each
    # tensor's largest entry at these sizes. Elementwise tolerances fail on the small entries of a
    # tensor whose large ones set the rounding, so the bound is relative to the tensor's scale.
    ref = model.new_state()
    prefill(model, torch.cat((prompt, torch.tensor([want])), dim=1), ref, chunk_size=8)
    for name, t in ref.to_tensors().items():
        got_t, t = engine.state.to_tensors()[name].float(), t.float()
        assert (got_t - t).abs().max() <= 1e-5 * t.abs().max() + 1e-7, name


def test_step_logits_and_load_state() -> None:
    model = make(STATIC, seed=3)
    prompt = torch.randint(0, 97, (1, 13), generator=torch.Generator().manual_seed(2))
    want, want_logits = eager_greedy(model, prompt, 10)
    engine = DecodeEngine(model, max_context=40, prefill_chunk=8)
    engine.prefill(prompt)
    for i in range(5):
        assert torch.equal(engine.step(want[i]), want_logits[i + 1]), f"step {i}"
    # A copy of the state, loaded into a fresh engine, continues identically.
    other = DecodeEngine(model, max_context=40)
    other.load_state(engine.export_state())
    for i in range(5, 10):
        assert torch.equal(other.step(torch.tensor([want[i]])), want_logits[i + 1]), f"step {i}"
    assert other.n_tokens == 23


def test_stop_token_and_context_limit() -> None:
    model = make(STATIC, seed=5)
    prompt = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    want, _ = eager_greedy(model, prompt, 12)
    engine = DecodeEngine(model, max_context=32)
    engine.prefill(prompt)
    stop = want[6]
    got = engine.generate_greedy(12, stop_token_ids=[stop])
    assert got == want[: want.index(stop) + 1]  # the stop token is fed, nothing after it
    assert engine.n_tokens == 9 + len(got)
    with pytest.raises(ContextFullError, match="max_context=32"):
        engine.prefill(torch.zeros(1, 30, dtype=torch.long))
    engine.reset()
    assert engine.n_tokens == 0 and engine.state.layers[1].cache["k"].shape[2] == 0


def test_step_fills_the_last_slot() -> None:
    """A step that brings the state to exactly max_context succeeds (the greedy next token is kept past
    the end); the one after it is refused with ContextFullError, not an index error."""
    model = make(STATIC, seed=5)
    engine = DecodeEngine(model, max_context=12)
    engine.prefill(torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(8)))
    assert engine.generate_greedy(2) and engine.n_tokens == 12
    with pytest.raises(ContextFullError, match="max_context=12"):
        engine.step(1)


def test_kernel_attention_mode_on_cpu() -> None:
    """attention="kernel" (the GPU default: kernels.attention_decode inside the one-graph step) runs the
    reference on the CPU; it agrees with model forward to float rounding, and greedily."""
    model = make(STATIC, seed=7)
    prompt = torch.randint(0, 97, (1, 17), generator=torch.Generator().manual_seed(4))
    want, want_logits = eager_greedy(model, prompt, 16)
    engine = DecodeEngine(model, max_context=48, attention="kernel")
    assert engine.attention == "kernel"
    engine.prefill(prompt)
    for i in range(16):
        got = engine.step(want[i])
        assert torch.allclose(got, want_logits[i + 1], rtol=1e-4, atol=1e-4), f"step {i}"
    engine.reset()
    engine.prefill(prompt)
    assert engine.generate_greedy(16) == want


MLA_CFG = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4}


@pytest.mark.parametrize("fuse, align", [(True, 1), (True, 16), (False, 1)])
@pytest.mark.parametrize(
    "layers, over",
    [
        (["gated_deltanet", "mla", "mamba2", "mla", "mlp"], {"mla": MLA_CFG}),
        (["gated_deltanet", "attention", "gated_deltanet"],  # OLMo Hybrid's block forms
         {"attention": {**TINY["attention"], "qk_norm": "full", "norm_position": "post"},
          "gated_deltanet": {**TINY["gated_deltanet"], "allow_neg_eigval": True}}),
        (["mla", "attention"], {"mla": {**MLA_CFG, "q_lora_rank": 12},
                                "mlp": {"hidden_dim": 64, "activation": "relu2"}}),
        (["gated_deltanet", "attention", "mlp"], {"moe": {**MOE, "scoring": "sigmoid"}}),
        (["kda", "mla", "kda"], {"kda": KDA_CFG, "mla": {**MLA_CFG, "rope_theta": None}}),  # Kimi Linear
    ],
)  # fmt: skip
def test_kernel_mode_fused_and_mla(layers: list[str], over: dict, fuse: bool, align: int) -> None:
    """The one-graph step (fused or the model's modules, MLA through kernels.mla_decode) against
    model forward: logits to float rounding at every step, the same greedy tokens."""
    model = make(layers, seed=11, **over)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    prompt = torch.randint(0, 97, (1, 19), generator=torch.Generator().manual_seed(5))
    want, want_logits = eager_greedy(model, prompt, 20)
    engine = DecodeEngine(model, max_context=48, attention="kernel", fuse=fuse, align=align)
    assert engine.static and engine.fused == fuse
    engine.prefill(prompt)
    for i in range(20):
        got = engine.step(want[i])
        assert torch.allclose(got, want_logits[i + 1], rtol=1e-4, atol=1e-4), f"step {i}"
    engine.reset()
    engine.prefill(prompt)
    assert engine.generate_greedy(20) == want
    after = model.state_dict()  # building the engine left the model's weights as they were
    assert after.keys() == before.keys() and all(torch.equal(after[n], t) for n, t in before.items())


def test_concat_shared_weights_are_views() -> None:
    """On CUDA the engine rebinds the projections as views of the concatenation (no memory doubled):
    the model computes the same, and a second concatenation reuses the first."""
    from hybrid_agent.model.decode.ops import _concat

    model = make(["gated_deltanet", "attention"], seed=12)
    prompt = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(6))
    want = model(prompt, model.new_state())
    a = model.layers[1].mixer
    w, b = _concat([a.q_proj, a.k_proj, a.v_proj], share=True)
    assert b is None and w.shape == (a.q_proj.out_features + 2 * a.k_proj.out_features, 32)
    assert a.k_proj.weight.data_ptr() == w[a.q_proj.out_features :].data_ptr()
    assert a.k_proj.weight.shape == (a.k_proj.out_features, 32)
    assert torch.equal(model(prompt, model.new_state()), want)
    w2, _ = _concat([a.q_proj, a.k_proj, a.v_proj], share=True)
    assert w2 is w
    g = model.layers[0].mixer  # q|k|v|a|b|g = 16 + 16 + 32 + 4 + 4 + 32 = 104 outputs: 8 zero rows
    lins = [g.q_proj, g.k_proj, g.v_proj, g.a_proj, g.b_proj, g.g_proj]
    w3, _ = _concat(lins, share=True, align=16)
    assert w3.shape == (112, 32) and not w3[104:].any()
    assert g.g_proj.weight.shape == (32, 32) and g.g_proj.weight.data_ptr() == w3[72:].data_ptr()
    assert torch.equal(model(prompt, model.new_state()), want)
