"""Qwen3.5-MoE (every layer's MLP a mixture of experts, model/moe.py) and Qwen3-Next (MoE on the layers
its config chooses, Gated DeltaNet projections stored per key head). Beyond the parity of
tests/checkpoints/test_ckpt_parity.py: what the adapters map (router, experts stored per expert or
stacked, the gated shared expert, Qwen3-Next's interleaved in_proj_qkvz / in_proj_ba), chunked prefill
equal to token by token, the decode engine equal to the model's own forward."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.moe import MoE
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")


def test_adapter_maps_router_experts_and_shared_expert(checkpoint):
    folder, hf = checkpoint("qwen3_5_moe_text")
    model, _, _ = load_model(folder)
    m = model.config.moe
    assert (m.n_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim) == (8, 2, 16, 24)
    assert m.shared_gate and m.norm_topk_prob and m.scoring == "softmax" and m.layers is None
    ref, ours = hf.model.layers[1].mlp, model.layers[1].mlp
    assert isinstance(ours, MoE)
    assert torch.equal(ours.router.weight, ref.gate.weight)
    inner = m.hidden_dim
    assert torch.equal(ours.experts.gate_proj, ref.experts.gate_up_proj[:, :inner])
    assert torch.equal(ours.experts.up_proj, ref.experts.gate_up_proj[:, inner:])
    assert torch.equal(ours.experts.down_proj, ref.experts.down_proj)
    assert torch.equal(ours.shared_expert.down_proj.weight, ref.shared_expert.down_proj.weight)
    assert torch.equal(ours.shared_expert_gate.weight, ref.shared_expert_gate.weight)


def test_stacked_expert_weights_load_the_same_model(checkpoint):
    """Checkpoints that store the experts stacked (`experts.gate_up_proj`, `experts.down_proj`) load
    to the same weights as the per-expert ones transformers' save_pretrained writes."""
    folder, hf = checkpoint("qwen3_5_moe_text")
    want, _, _ = load_model(folder)
    tensors = load_file(folder / "model.safetensors")
    E = hf.config.num_experts
    for i in range(hf.config.num_hidden_layers):
        p = f"model.layers.{i}.mlp.experts."
        stack = {n: torch.stack([tensors.pop(f"{p}{e}.{n}.weight") for e in range(E)]) for n in
                 ("gate_proj", "up_proj", "down_proj")}  # fmt: skip
        tensors[f"{p}gate_up_proj"] = torch.cat((stack["gate_proj"], stack["up_proj"]), dim=1)
        tensors[f"{p}down_proj"] = stack["down_proj"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got, _, _ = load_model(folder)
    assert got.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(t, got.state_dict()[n]) for n, t in want.state_dict().items())


FAMILIES = ["qwen3_5_moe_text", "qwen3_next"]


def test_qwen3_next_maps_interleaved_projections_and_sparse_layers(checkpoint):
    folder, hf = checkpoint("qwen3_next")
    model, _, _ = load_model(folder)
    assert model.config.moe.layers == [0, 1, 3]  # mlp_only_layers=[2]
    assert [type(b.mlp).__name__ for b in model.layers] == ["MoE", "MoE", "MLP", "MoE"]
    ref, ours = hf.model.layers[0].linear_attn, model.layers[0].mixer
    x = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(0))
    q, k, v, z, b, a = ref.fix_query_key_value_ordering(ref.in_proj_qkvz(x), ref.in_proj_ba(x))
    for want, proj in ((q, ours.q_proj), (k, ours.k_proj), (v, ours.v_proj), (z, ours.g_proj)):
        assert torch.allclose(want.reshape(1, 3, -1), proj(x), atol=1e-6)
    assert torch.allclose(b, ours.b_proj(x), atol=1e-6) and torch.allclose(a, ours.a_proj(x), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_token_by_token(checkpoint, chunked_equals_stepwise, family):
    folder, _ = checkpoint(family)
    chunked_equals_stepwise(load_model(folder)[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fuse", [False, True])
def test_engine_greedy_equals_model_forward(checkpoint, engine_equals_model, fuse, family):
    """Unfused: the model's own forwards, bit for bit; fused (kernels.silu_mul, stacked projections):
    the same greedy tokens and state to float rounding."""
    folder, _ = checkpoint(family)
    engine = engine_equals_model(load_model(folder)[0], exact=not fuse, attention="kernel" if fuse else None)
    assert engine.fused == fuse
