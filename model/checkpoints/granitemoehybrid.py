"""Granite 4.0 (IBM), dense variants: Mamba-2 and attention layers, each followed by a SwiGLU MLP.

transformers: `GraniteMoeHybridForCausalLM` (`model_type` "granitemoehybrid"). Pre-norm blocks
(`input_layernorm`, `post_attention_layernorm`); `layer_types` names each layer "mamba" or "attention"
("linear_attention" / "full_attention" in transformers 5). The Mamba-2 mixer is Bamba's (gate, then a
grouped RMSNorm; model/checkpoints/bamba.py). Attention is Llama's with full RoPE when
`position_embedding_type` is "rope", none otherwise (the 4.0-H models are NoPE; the all-attention
Granite 4.0 models use RoPE). The dense MLP is `shared_mlp`, whose `input_linear` holds the gate and up
projections stacked (gate first). With experts (`num_local_experts` > 0, the 4.0-H Tiny/Small models)
every layer's MLP is a mixture of experts (model/moe.py) whose shared expert is `shared_mlp`, ungated:
the router `block_sparse_moe.router.layer` (E, D) keeps the top-k logits and softmaxes them, which is
softmax over all experts renormalised over the top k; the routed experts are stored stacked,
`block_sparse_moe.input_linear` (E, 2I, D, gate rows first) and `output_linear` (E, D, I) (transformers 5
renames them `experts.gate_up_proj` / `experts.down_proj` and the router `router.weight`; both read).

Granite's multipliers are constants on linear maps, folded into the weights here (in fp32, before the
cast to the target dtype), so the model core runs plain blocks:
- `embedding_multiplier` into the embedding, `1 / logits_scaling` into the LM head (untied when either
  is not 1);
- `residual_multiplier` scales each sub-layer's output before the residual add: into o_proj, the Mamba-2
  out_proj and the MLP's down projection (with experts: every expert's and the shared MLP's);
- `attention_multiplier` is the softmax scale, where ours is 1/sqrt(head_dim): q_proj gets
  `attention_multiplier * sqrt(head_dim)` (RoPE is linear in q, so the factor passes through it).
"""

from __future__ import annotations

import math
from typing import Any

from hybrid_agent.model.checkpoints.bamba import mamba2_config, mamba2_sources
from hybrid_agent.model.checkpoints.plan import Source, get, part, rope_theta, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "granitemoehybrid"
_KINDS = {
    "mamba": "mamba2", "linear_attention": "mamba2",
    "attention": "attention", "full_attention": "attention",
}  # fmt: skip


def _layer_types(hf: dict[str, Any]) -> list[str]:
    raw = hf.get("layer_types") or hf.get("layers_block_type") or ["mamba"] * hf["num_hidden_layers"]
    bad = sorted({t for t in raw if t not in _KINDS})
    if bad:
        raise CheckpointError(f"{FAMILY}: unknown layer types {bad} in layer_types (mamba or attention)")
    return [_KINDS[t] for t in raw]


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    experts = get(hf, "num_local_experts", 8)  # transformers' default: a config without it has experts
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    positions = hf.get("position_embedding_type")
    if positions not in (None, "nope", "rope"):
        raise CheckpointError(
            f"{FAMILY}: position_embedding_type={positions!r} is not supported (rope, nope)"
        )
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    tied = get(hf, "tie_word_embeddings", False)
    unscaled = get(hf, "embedding_multiplier", 1.0) == get(hf, "logits_scaling", 1.0) == 1.0
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=_layer_types(hf),
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", d // heads),
            "rope_theta": rope_theta(hf) if positions == "rope" else None,
            "bias": get(hf, "attention_bias", False),
        },
        mamba2=mamba2_config(hf),
        mlp={"hidden_dim": get(hf, "shared_intermediate_size", 1024), "bias": False},
        moe=_moe_config(hf, experts),
        norm_eps=get(hf, "rms_norm_eps", 1e-6),
        tie_embeddings=tied and unscaled,
    )


def _moe_config(hf: dict[str, Any], experts: int) -> dict[str, Any]:
    """Every layer's MLP an MoE: softmax over the top-k logits (= softmax renormalised over the top k),
    `shared_mlp` the ungated shared expert."""
    if not experts:
        return {}
    return {
        "n_experts": experts,
        "top_k": get(hf, "num_experts_per_tok", 2),
        "hidden_dim": get(hf, "intermediate_size", 11008),
        "shared_hidden_dim": get(hf, "shared_intermediate_size", 1024),
        "norm_topk_prob": True,
    }


def _moe_sources(cfg: HybridConfig, src: str, dst: str, residual: float) -> dict[str, Source]:
    """Router, stacked experts (either spelling) and the shared MLP; `residual` folded into the down
    projections, since the MoE's output (routed + shared) is scaled by it before the residual add."""
    inner, moe = cfg.moe.hidden_dim, f"{src}block_sparse_moe."
    assert inner is not None  # set by HybridConfig

    def fused(which: int) -> Source:
        pick = slice(0, inner) if which == 0 else slice(inner, 2 * inner)
        names = (f"{moe}input_linear.weight", f"{moe}experts.gate_up_proj")
        return Source((names,), lambda ts: ts[0][:, pick])

    down = (f"{moe}output_linear.weight", f"{moe}experts.down_proj")
    shared = f"{src}shared_mlp."
    out = {
        f"{dst}router.weight": take(f"{moe}router.layer.weight", f"{moe}router.weight"),
        f"{dst}experts.gate_proj": fused(0),
        f"{dst}experts.up_proj": fused(1),
        f"{dst}experts.down_proj": take(*down, scale=residual),
    }
    if not cfg.moe.shared_hidden_dim:
        return out
    return out | {
        f"{dst}shared_expert.gate_proj.weight": part(f"{shared}input_linear.weight", 0, 2),
        f"{dst}shared_expert.up_proj.weight": part(f"{shared}input_linear.weight", 1, 2),
        f"{dst}shared_expert.down_proj.weight": take(f"{shared}output_linear.weight", scale=residual),
    }


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    residual = float(get(hf, "residual_multiplier", 1.0))
    assert cfg.attention.head_dim is not None  # set by HybridConfig
    q_scale = float(get(hf, "attention_multiplier", 1.0)) * math.sqrt(cfg.attention.head_dim)
    out = {
        "embed_tokens.weight": take("model.embed_tokens.weight", scale=get(hf, "embedding_multiplier", 1.0)),
        "norm.weight": take("model.norm.weight"),
    }
    if not cfg.tie_embeddings:
        # Tied in the checkpoint but scaled differently here: the head is the embedding, scaled.
        tied = ("model.embed_tokens.weight",) if get(hf, "tie_word_embeddings", False) else ()
        out["lm_head.weight"] = take("lm_head.weight", *tied, scale=1.0 / get(hf, "logits_scaling", 1.0))
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = take(f"{src}input_layernorm.weight")
        out[f"{dst}mlp_norm.weight"] = take(f"{src}post_attention_layernorm.weight")
        if cfg.moe.used_in(i):
            out.update(_moe_sources(cfg, src, f"{dst}mlp.", residual))
        else:
            fused = f"{src}shared_mlp.input_linear.weight"
            out[f"{dst}mlp.gate_proj.weight"] = part(fused, 0, 2)
            out[f"{dst}mlp.up_proj.weight"] = part(fused, 1, 2)
            out[f"{dst}mlp.down_proj.weight"] = take(f"{src}shared_mlp.output_linear.weight", scale=residual)
        if kind == "mamba2":
            out.update(mamba2_sources(cfg, f"{src}mamba.", f"{dst}mixer.", out_scale=residual))
            continue
        scales = {"q_proj": q_scale, "k_proj": 1.0, "v_proj": 1.0, "o_proj": residual}
        for p, scale in scales.items():
            out[f"{dst}mixer.{p}.weight"] = take(f"{src}self_attn.{p}.weight", scale=scale)
            if cfg.attention.bias:
                out[f"{dst}mixer.{p}.bias"] = take(f"{src}self_attn.{p}.bias", scale=scale)
    return out
