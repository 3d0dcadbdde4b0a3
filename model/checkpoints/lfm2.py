"""LFM2 (Liquid AI), dense: gated short-convolution layers and attention layers, each with a SwiGLU MLP.

transformers: `Lfm2ForCausalLM`. Every layer is `h = x + op(operator_norm(x))`, then
`h + feed_forward(ffn_norm(h))`, where `op` is
- a `conv` layer: our `short_conv` (model/short_conv.py: in_proj -> B, C, x; B * x through a causal
  depthwise conv of width `conv_L_cache`; C * that; out_proj), or
- a `full_attention` layer: GQA with RoPE and a per-head RMSNorm of q and k (`qk_norm="head"`), whose
  output projection is named `out_proj`.
The final norm is `model.embedding_norm` (applied after the last layer, whatever its name says); the
MLP is `w2(silu(w1(x)) * w3(x))`. The layer pattern is `layer_types` or, in older configs,
`full_attn_idxs` (every layer attention when neither is given, as transformers reads it).
Older configs spell the MLP width `block_ff_dim` and the tie `tie_embedding`; both win over the new
names, as in transformers. The MLP width is `intermediate_size` adjusted as LFM2 does when
`block_auto_adjust_ff_dim` is on: 2/3 of it, times `block_ffn_dim_multiplier`, rounded up to a
multiple of `block_multiple_of`.

LFM2-MoE (`Lfm2MoeForCausalLM`, model_type "lfm2_moe"): the same layers; the first `num_dense_layers`
feed-forwards are SwiGLU MLPs of `intermediate_size` (not adjusted), the others mixtures of experts
(model/moe.py): sigmoid scores from `feed_forward.gate` (E, D), with `use_expert_bias` the choice-only
bias `feed_forward.expert_bias`, top-k renormalised (`norm_topk_prob`; transformers adds 1e-6 to the
sum, a relative 1e-6 left out here) and scaled by `routed_scaling_factor`; SwiGLU experts stored per
expert (`experts.{e}.w1` gate, `w3` up, `w2` down) or stacked (transformers 5); no shared expert.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, get, rope_theta, swiglu_experts, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "lfm2"
MOE_FAMILY = "lfm2_moe"
DEFAULT_ROPE_THETA = 1_000_000.0  # LFM2's default base when the config names none
LAYER_KINDS = {"conv": "short_conv", "full_attention": "attention"}  # LFM2 layer_types -> ours


def _layer_types(hf: dict[str, Any]) -> list[str]:
    n = hf["num_hidden_layers"]
    raw = hf.get("layer_types")
    if raw is None:
        attn = hf.get("full_attn_idxs")
        attn = set(range(n) if attn is None else attn)
        raw = ["full_attention" if i in attn else "conv" for i in range(n)]
    bad = sorted({t for t in raw if t not in LAYER_KINDS})
    if bad:
        raise CheckpointError(f"{FAMILY}: unknown layer types {bad} (only conv and full_attention)")
    if len(raw) != n:
        raise CheckpointError(f"{FAMILY}: {len(raw)} layer_types for num_hidden_layers={n}")
    return [LAYER_KINDS[t] for t in raw]


def mlp_width(hf: dict[str, Any]) -> int:
    """The SwiGLU hidden size LFM2 builds from its config (module docstring)."""
    width = int(get(hf, "block_ff_dim", get(hf, "intermediate_size", 12288)))
    if not get(hf, "block_auto_adjust_ff_dim", True):
        return width
    width = int(2 * width / 3)
    mult = hf.get("block_ffn_dim_multiplier", 1.0)
    if mult is None:
        return width
    width = int(mult * width)
    step = int(get(hf, "block_multiple_of", 256))
    return step * ((width + step - 1) // step)


def _tied(hf: dict[str, Any]) -> bool:
    return bool(get(hf, "tie_embedding", get(hf, "tie_word_embeddings", True)))


def _moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    n, dense = hf["num_hidden_layers"], get(hf, "num_dense_layers", 2)
    return {
        "n_experts": get(hf, "num_experts", 32),
        "top_k": get(hf, "num_experts_per_tok", 4),
        "hidden_dim": get(hf, "moe_intermediate_size", 1792),
        "scoring": "sigmoid",
        "score_bias": bool(get(hf, "use_expert_bias", True)),
        "norm_topk_prob": get(hf, "norm_topk_prob", True),
        "routed_scaling": float(get(hf, "routed_scaling_factor", 1.0)),
        "layers": list(range(dense, n)),
    }


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    moe = hf.get("model_type") == MOE_FAMILY
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    has_theta = "rope_theta" in hf or "rope_theta" in (hf.get("rope_parameters") or {})
    theta = rope_theta(hf if has_theta else {**hf, "rope_theta": DEFAULT_ROPE_THETA})
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=_layer_types(hf),
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", d // heads),
            "rope_theta": theta,
            "qk_norm": "head",
            "bias": False,
        },
        short_conv={"d_conv": get(hf, "conv_L_cache", 3), "bias": get(hf, "conv_bias", False)},
        mlp={"hidden_dim": hf["intermediate_size"] if moe else mlp_width(hf), "bias": False},
        moe=_moe_config(hf) if moe else {},
        norm_eps=get(hf, "norm_eps", 1e-5),
        tie_embeddings=_tied(hf),
    )


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    out = {
        "embed_tokens.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.embedding_norm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = take(f"{src}operator_norm.weight")
        out[f"{dst}mlp_norm.weight"] = take(f"{src}ffn_norm.weight")
        ff = f"{src}feed_forward."
        if cfg.moe.used_in(i):
            assert cfg.moe.hidden_dim is not None  # set by HybridConfig
            out[f"{dst}mlp.router.weight"] = take(f"{ff}gate.weight")
            if cfg.moe.score_bias:
                out[f"{dst}mlp.score_bias"] = take(f"{ff}expert_bias")
            experts = swiglu_experts([ff], cfg.moe.n_experts, cfg.moe.hidden_dim, ("w1", "w3", "w2"))
            out |= {f"{dst}mlp.experts.{k}": v for k, v in experts.items()}
        else:
            for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                out[f"{dst}mlp.{ours}.weight"] = take(f"{ff}{theirs}.weight")
        if kind == "attention":
            a, att = f"{src}self_attn.", f"{dst}mixer."
            for p in ("q_proj", "k_proj", "v_proj"):
                out[f"{att}{p}.weight"] = take(f"{a}{p}.weight")
            out[f"{att}o_proj.weight"] = take(f"{a}out_proj.weight")
            out[f"{att}q_norm.weight"] = take(f"{a}q_layernorm.weight")
            out[f"{att}k_norm.weight"] = take(f"{a}k_layernorm.weight")
            continue
        c, conv = f"{src}conv.", f"{dst}mixer."
        names = [("in_proj", "in_proj"), ("conv1d", "conv"), ("out_proj", "out_proj")]
        for ours, theirs in names:
            out[f"{conv}{ours}.weight"] = take(f"{c}{theirs}.weight")
            if cfg.short_conv.bias:
                out[f"{conv}{ours}.bias"] = take(f"{c}{theirs}.bias")
    return out
