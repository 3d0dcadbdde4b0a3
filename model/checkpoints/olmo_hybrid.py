"""OLMo Hybrid (AI2): Gated DeltaNet layers with full attention every few layers.

transformers: `OlmoHybridForCausalLM`. Attention layers are post-norm (OLMo-2 style: the norm is on the
sub-layer's output), with QK-norm over the whole projection and no RoPE in the released checkpoints
(`rope_theta` null; a config without any RoPE key gets transformers' default RoPE, and so does ours);
Gated DeltaNet layers are pre-norm, with negative eigenvalues allowed and a gated output norm of eps
1e-5 (FLA's default, not the model's rms_norm_eps).

Spellings in circulation, all accepted: `o_proj`/`out_proj` and `o_norm`/`norm` in the linear layers;
`input_layernorm`/`attention_layer_norm` and, in every layer, `post_attention_layernorm`/
`feedforward_layer_norm` (transformers renames these without looking at the layer's kind, and writes
the OLMo-core names back on save_pretrained); one fused `conv1d` or separate `q_conv1d`, `k_conv1d`,
`v_conv1d` (concatenated here).
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, concat, either, get, rope_theta, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "olmo_hybrid"
_KINDS = {"linear_attention": "gated_deltanet", "full_attention": "attention"}


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    types = hf.get("layer_types") or [
        "full_attention" if i % 4 == 3 else "linear_attention" for i in range(hf["num_hidden_layers"])
    ]
    unknown = sorted({t for t in types if t not in _KINDS})
    if unknown:
        raise CheckpointError(f"{FAMILY}: unknown layer types {unknown} in config.json layer_types")
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    k_heads = get(hf, "linear_num_key_heads", heads)
    k_dim = get(hf, "linear_key_head_dim", int(0.75 * d / k_heads))
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=[_KINDS[t] for t in types],
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", d // heads),
            "rope_theta": rope_theta(hf),  # null in the released checkpoints: no RoPE
            "qk_norm": "full",
            "bias": get(hf, "attention_bias", False),
            "norm_position": "post",
        },
        gated_deltanet={
            "n_heads": k_heads,
            "n_v_heads": get(hf, "linear_num_value_heads", heads),
            "head_k_dim": k_dim,
            "head_v_dim": get(hf, "linear_value_head_dim", 2 * k_dim),
            "d_conv": get(hf, "linear_conv_kernel_dim", 4),
            "conv_bias": False,
            "allow_neg_eigval": get(hf, "linear_allow_neg_eigval", True),
            "norm_eps": 1e-5,
        },
        mlp={"hidden_dim": hf["intermediate_size"], "bias": False},
        norm_eps=get(hf, "rms_norm_eps", 1e-6),
        tie_embeddings=get(hf, "tie_word_embeddings", False),
    )


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    out = {
        "embed_tokens.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.norm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out[f"{dst}mlp.{proj}.weight"] = take(f"{src}mlp.{proj}.weight")
        if kind == "attention":
            a = f"{src}self_attn."
            out[f"{dst}mixer_norm.weight"] = take(
                f"{src}post_attention_layernorm.weight", f"{src}feedforward_layer_norm.weight"
            )
            out[f"{dst}mlp_norm.weight"] = take(f"{src}post_feedforward_layernorm.weight")
            for p in ("q_proj", "k_proj", "v_proj"):
                out[f"{dst}mixer.{p}.weight"] = take(f"{a}{p}.weight")
            out[f"{dst}mixer.o_proj.weight"] = take(f"{a}o_proj.weight", f"{a}out_proj.weight")
            if cfg.attention.bias:
                for p in ("q_proj", "k_proj", "v_proj"):
                    out[f"{dst}mixer.{p}.bias"] = take(f"{a}{p}.bias")
                out[f"{dst}mixer.o_proj.bias"] = take(f"{a}o_proj.bias", f"{a}out_proj.bias")
            out[f"{dst}mixer.q_norm.weight"] = take(f"{a}q_norm.weight")
            out[f"{dst}mixer.k_norm.weight"] = take(f"{a}k_norm.weight")
        else:
            g = f"{src}linear_attn."
            out[f"{dst}mixer_norm.weight"] = take(
                f"{src}input_layernorm.weight", f"{src}attention_layer_norm.weight"
            )
            out[f"{dst}mlp_norm.weight"] = take(
                f"{src}post_attention_layernorm.weight", f"{src}feedforward_layer_norm.weight"
            )
            for p in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj"):
                out[f"{dst}mixer.{p}.weight"] = take(f"{g}{p}.weight")
            out[f"{dst}mixer.o_proj.weight"] = take(f"{g}o_proj.weight", f"{g}out_proj.weight")
            out[f"{dst}mixer.o_norm.weight"] = take(f"{g}o_norm.weight", f"{g}norm.weight")
            out[f"{dst}mixer.A_log"] = take(f"{g}A_log")
            out[f"{dst}mixer.dt_bias"] = take(f"{g}dt_bias")
            out[f"{dst}mixer.conv1d.weight"] = _conv(g)
    return out


def _conv(g: str) -> Source:
    """One depthwise conv over q, k, v side by side, or three (OLMo-core's layout) concatenated."""
    return either(take(f"{g}conv1d.weight"), concat([(f"{g}{p}_conv1d.weight",) for p in ("q", "k", "v")]))
