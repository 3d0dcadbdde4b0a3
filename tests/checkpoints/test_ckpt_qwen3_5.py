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
