"""Qwen3.5 (dense) beyond the parity of tests/checkpoints/test_ckpt_parity.py: what the adapter maps,
chunked prefill equal to token by token, the decode engine equal to the model's own forward (gated
attention through the engine's fused prep). The MoE variants: tests/checkpoints/test_ckpt_qwen3_5_moe.py."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import load_model

pytest.importorskip("transformers")


def test_adapter_maps_gate_norms_and_projections(checkpoint):
    folder, hf = checkpoint("qwen3_5_text")
    model, _, _ = load_model(folder)
    a = model.config.attention
    assert a.output_gate and a.qk_norm == "head" and a.rope_fraction == 0.25
    assert model.config.gated_deltanet.norm_eps == hf.config.rms_norm_eps
    ref, ours = hf.model.layers[1].self_attn, model.layers[1].mixer
    H, Dh = a.n_heads, a.head_dim
    q_gate = ref.q_proj.weight.reshape(H, 2, Dh, -1)
    assert torch.equal(ours.q_proj.weight, q_gate[:, 0].reshape(H * Dh, -1))
    assert torch.equal(ours.g_proj.weight, q_gate[:, 1].reshape(H * Dh, -1))
    assert torch.equal(ours.q_norm.weight, 1.0 + ref.q_norm.weight)  # zero-centred, folded
    assert torch.equal(model.norm.weight, 1.0 + hf.model.norm.weight)
    gdn, ours_gdn = hf.model.layers[0].linear_attn, model.layers[0].mixer
    assert torch.equal(ours_gdn.o_norm.weight, gdn.norm.weight)  # a plain norm: as stored
    stacked = torch.cat((ours_gdn.q_proj.weight, ours_gdn.k_proj.weight, ours_gdn.v_proj.weight))
    assert torch.equal(stacked, gdn.in_proj_qkv.weight)


def test_chunked_prefill_equals_token_by_token(checkpoint, chunked_equals_stepwise):
    folder, _ = checkpoint("qwen3_5_text")
    chunked_equals_stepwise(load_model(folder)[0])


def test_engine_greedy_equals_model_forward(checkpoint, engine_equals_model):
    folder, _ = checkpoint("qwen3_5_text")
    engine_equals_model(load_model(folder)[0])


@pytest.mark.parametrize("kernels", ["auto", pytest.param("triton", marks=pytest.mark.slow)])
def test_fused_engine_greedy_equals_model_forward(checkpoint, monkeypatch, kernels):
    """The fused step on Qwen3.5's layers: stacked q|k|v|g and q|k|v|a|b|g projections, the attention
    prep with partial RoPE (4 of 16 channels) and per-head QK-norm, the output gate inside
    kernels.attention_decode; "triton" runs every kernel of the engine through Triton's interpreter.
    Against the model's own forward on the torch kernels: the same greedy tokens, the same state to
    float rounding."""
    from hybrid_agent.model.decode.engine import DecodeEngine
    from hybrid_agent.model.decode.generate import prefill

    folder, _ = checkpoint("qwen3_5_text")
    model = load_model(folder)[0]
    assert model.layers[1].mixer.rope_dim == 4 and model.layers[1].mixer.head_dim == 16
    prompt = torch.randint(0, model.config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(4))
    state = model.new_state()
    logits, want = prefill(model, prompt, state, chunk_size=8), []
    for _ in range(10):
        want.append(int(logits.argmax(-1)))
        logits = model(torch.tensor([[want[-1]]]), state)[:, -1]
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", kernels)
    engine = DecodeEngine(model, max_context=48, prefill_chunk=8, attention="kernel")
    assert engine.fused and engine.attn_prep
    gdn, attn = model.layers[0].mixer, model.layers[1].mixer
    # one matmul each for the split q|k|v|a|b|z of a Gated DeltaNet layer and q|k|v|gate of an attention one
    for mixer in (gdn, attn):
        stacked = engine.stacked_weight(mixer.in_projs)
        assert stacked is not None and stacked.shape[0] == sum(lin.out_features for lin in mixer.in_projs)
    engine.prefill(prompt)
    assert engine.generate_greedy(10, sync_every=5) == want
    for name, t in state.to_tensors().items():
        got = engine.state.to_tensors()[name].float()
        assert (got - t.float()).abs().max() <= 1e-4 * t.float().abs().max() + 1e-6, name
