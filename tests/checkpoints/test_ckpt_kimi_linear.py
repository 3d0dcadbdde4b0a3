"""Kimi Linear: KDA layers (a delta rule decayed per key channel) and MLA without RoPE.
Parity with transformers, chunked prefill against token by token, the decode engine against the
model's own forward, how its config.json is read (MoE layers included; their parity is in
tests/checkpoints/test_ckpt_moe_families.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.checkpoints import kimi_linear
from hybrid_agent.model.errors import CheckpointError

KDA, MLA = "linear_attention", "full_attention"

CASES: list[dict[str, Any]] = [
    {},  # full-rank q_proj, KDA conv width 4
    # q through q_a_proj / q_a_layernorm / q_b_proj; tie_word_embeddings, which transformers ignores here
    {"q_lora_rank": 12, "attention_bias": True, "tie_word_embeddings": True, "linear_conv_kernel_dim": 3,
     "layer_types": [MLA, KDA, KDA], "num_hidden_layers": 3, "mlp_layer_types": ["dense"] * 3},
]  # fmt: skip


@pytest.mark.parametrize("kw", CASES, ids=["default", "q-lora-bias-tied-width3"])
def test_parity(checkpoint, check_parity, kw):
    folder, hf = checkpoint("kimi_linear", **kw)
    model, _, _ = load_model(folder)
    assert model.config.layer_types == [kimi_linear.LAYER_KINDS[t] for t in hf.config.layer_types]
    assert model.config.mla.rope_theta is None
    check_parity(folder, hf)


def test_parity_long_prompt(checkpoint, check_parity):
    """70 tokens: several KDA chunks (64) in one prefill on both sides, the state carried across them."""
    folder, hf = checkpoint("kimi_linear", seed=2)
    check_parity(folder, hf, seed=2, prompt=70)


def test_chunked_prefill_equals_token_by_token(checkpoint, chunked_equals_stepwise):
    folder, _ = checkpoint("kimi_linear")
    model, _, _ = load_model(folder)
    for block in model.layers:
        if block.kind == "kda":
            block.mixer.chunk_size = 4  # several chunks inside each prefill piece
    ref, _ = chunked_equals_stepwise(model, n_tokens=29, state_rtol=1e-5)
    assert {"layers.0.conv", "layers.0.recurrent", "layers.1.latent"} <= ref.keys()
    assert ref["layers.0.recurrent"].dtype == torch.float32 and ref["layers.0.conv"].dtype == torch.float32


@pytest.mark.parametrize("attention", ["sdpa", "kernel"])
def test_engine_greedy_equals_model_forward(checkpoint, engine_equals_model, attention):
    """kda is a graphed kind: the engine's static step runs the layer's own forward through its ops and
    the one-step kernels, and gives the model's greedy tokens."""
    folder, _ = checkpoint("kimi_linear")
    engine = engine_equals_model(load_model(folder)[0], steps=16, exact=False, attention=attention)
    assert engine.fused == (attention == "kernel")


def _hub_config(**kw: Any) -> dict[str, Any]:
    """A config.json as the Hub's Kimi Linear checkpoints spell it (sizes nested, 1-based layer lists)."""
    base = {
        "model_type": "kimi_linear", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 4, "num_attention_heads": 4, "kv_lora_rank": 16, "q_lora_rank": None,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "first_k_dense_replace": 4,
        "linear_attn_config": {"head_dim": 8, "num_heads": 2, "short_conv_kernel_size": 4,
                               "full_attn_layers": [2, 4], "kda_layers": [1, 3]},
    }  # fmt: skip
    return {**base, **kw}


def test_hub_config_is_read():
    cfg = kimi_linear.hybrid_config(_hub_config())
    assert cfg.layer_types == ["kda", "mla", "kda", "mla"]
    assert (cfg.kda.n_heads, cfg.kda.head_dim, cfg.kda.d_conv) == (2, 8, 4)
    assert cfg.mla.rope_theta is None and cfg.mla.q_lora_rank is None and not cfg.tie_embeddings
    default = kimi_linear.hybrid_config(
        _hub_config(linear_attn_config={}, num_hidden_layers=6, first_k_dense_replace=6)
    )
    assert default.layer_types == ["kda", "kda", "kda", "kda", "mla", "kda"]  # transformers' default


HUB_MOE = {"num_experts": 8, "num_experts_per_token": 2, "num_shared_experts": 2, "num_expert_group": 4,
           "topk_group": 2, "moe_renormalize": False, "moe_intermediate_size": 16,
           "routed_scaling_factor": 2.5, "moe_router_activation_func": "sigmoid"}  # fmt: skip


@pytest.mark.parametrize(
    "kw, layers",
    [
        ({"first_k_dense_replace": 1}, [1, 2, 3]),
        ({"mlp_layer_types": ["dense", "sparse", "dense", "dense"]}, [1]),
        ({}, [1, 2, 3]),
    ],
    ids=["first-k-dense", "mlp-layer-types", "default-first-k"],
)
def test_sparse_layers_are_moe_with_the_hub_keys(kw, layers):
    hf = _hub_config(**kw, **HUB_MOE)
    if not kw:
        del hf["first_k_dense_replace"]  # transformers' default: only the first MLP is dense
    m = kimi_linear.hybrid_config(hf).moe
    assert m.layers == layers
    assert (m.n_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim, m.n_groups, m.topk_groups) == (
        8, 2, 16, 32, 4, 2,
    )  # fmt: skip
    assert m.scoring == "sigmoid" and m.score_bias and not m.norm_topk_prob and m.routed_scaling == 2.5


def test_softmax_router_is_refused_in_one_line():
    hf = _hub_config(first_k_dense_replace=1, **{**HUB_MOE, "moe_router_activation_func": "softmax"})
    with pytest.raises(CheckpointError, match="moe_router_activation_func") as e:
        kimi_linear.hybrid_config(hf)
    assert "\n" not in str(e.value)
