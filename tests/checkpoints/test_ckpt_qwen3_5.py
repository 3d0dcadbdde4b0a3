"""Qwen3.5 (dense) beyond the parity of tests/checkpoints/test_ckpt_parity.py: what the adapter maps,
chunked prefill equal to token by token, the decode engine equal to the model's own forward (gated
attention through the engine's fused prep). The MoE variants: tests/checkpoints/test_ckpt_qwen3_5_moe.py."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill

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


def test_chunked_prefill_equals_token_by_token(checkpoint):
    folder, _ = checkpoint("qwen3_5_text")
    model, _, _ = load_model(folder)
    ids = torch.randint(0, 300, (1, 21), generator=torch.Generator().manual_seed(3))
    chunked, one = model.new_state(), model.new_state()
    got = prefill(model, ids, chunked, chunk_size=8)
    for t in range(ids.shape[1]):
        want = model(ids[:, t : t + 1], one)[:, -1]
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    for name, t in one.to_tensors().items():
        c, t = chunked.to_tensors()[name].float(), t.float()
        assert (c - t).abs().max() <= 1e-4 * t.abs().max() + 1e-6, name


def test_engine_greedy_equals_model_forward(checkpoint):
    folder, _ = checkpoint("qwen3_5_text")
    model, _, _ = load_model(folder)
    prompt = torch.randint(0, 300, (1, 13), generator=torch.Generator().manual_seed(4))
    state = model.new_state()
    logits = prefill(model, prompt, state, chunk_size=8)
    want, want_logits = [], [logits.clone()]
    for _ in range(12):
        want.append(int(logits.argmax(-1)))
        logits = model(torch.tensor([[want[-1]]]), state)[:, -1]
        want_logits.append(logits.clone())
    engine = DecodeEngine(model, max_context=48, prefill_chunk=8)
    assert engine.static
    assert torch.equal(engine.prefill(prompt), want_logits[0])
    for i in range(12):
        assert torch.equal(engine.step(want[i]), want_logits[i + 1]), f"step {i}"
