"""Bamba (IBM): Mamba-2 layers with attention at `attn_layer_indices`, each followed by a SwiGLU MLP.

transformers: `BambaForCausalLM`. Pre-norm blocks (`input_layernorm`, `pre_ff_layernorm`); attention is
Llama's with RoPE on the first half of each head only (transformers hard-codes partial_rotary_factor 0.5
for Bamba); the Mamba-2 mixer is transformers' Mamba2Mixer (gate, then a grouped RMSNorm).
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import MAMBA2_WEIGHTS, Source, dt_limit, get, rope_theta, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "bamba"


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    attn = set(hf.get("attn_layer_indices") or [])
    rope = hf.get("rope_parameters") or {}
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=["attention" if i in attn else "mamba2" for i in range(hf["num_hidden_layers"])],
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", d // heads),
            "rope_theta": rope_theta(hf),
            "rope_fraction": float(rope.get("partial_rotary_factor") or 0.5),
            "bias": get(hf, "attention_bias", False),
        },
        mamba2=mamba2_config(hf),
        mlp={"hidden_dim": hf["intermediate_size"], "bias": get(hf, "mlp_bias", False)},
        norm_eps=get(hf, "rms_norm_eps", 1e-5),
        tie_embeddings=get(hf, "tie_word_embeddings", False),
    )


def mamba2_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The Mamba-2 sub-config from the `mamba_*` keys that Bamba and Granite 4.0-H share."""
    d = hf["hidden_size"]
    expand, n_heads = get(hf, "mamba_expand", 2), get(hf, "mamba_n_heads", 128)
    head_dim = hf.get("mamba_d_head")
    head_dim = expand * d // n_heads if head_dim in (None, "auto") else head_dim
    return {
        "expand": expand,
        "d_inner": expand * d,
        "head_dim": head_dim,
        "d_state": get(hf, "mamba_d_state", 256),
        "n_groups": get(hf, "mamba_n_groups", 1),
        "d_conv": get(hf, "mamba_d_conv", 4),
        "chunk_size": get(hf, "mamba_chunk_size", 256),
        "conv_bias": get(hf, "mamba_conv_bias", True),
        "bias": get(hf, "mamba_proj_bias", False),
        "dt_limit": dt_limit(hf.get("time_step_limit")),
    }


def mamba2_sources(cfg: HybridConfig, src: str, dst: str, *, out_scale: float = 1.0) -> dict[str, Source]:
    """Our Mamba-2 mixer's weights under `dst` from the checkpoint's under `src` (same names);
    `out_scale` multiplies out_proj (a constant on the mixer's output, folded in)."""
    names = list(MAMBA2_WEIGHTS)
    names += ["conv1d.bias"] if cfg.mamba2.conv_bias else []
    names += ["in_proj.bias", "out_proj.bias"] if cfg.mamba2.bias else []
    return {
        f"{dst}{n}": take(f"{src}{n}", scale=out_scale if n.startswith("out_proj") else None) for n in names
    }


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    out = {
        "embed_tokens.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.final_layernorm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = take(f"{src}input_layernorm.weight")
        out[f"{dst}mlp_norm.weight"] = take(f"{src}pre_ff_layernorm.weight")
        for p in ("gate_proj", "up_proj", "down_proj"):
            out[f"{dst}mlp.{p}.weight"] = take(f"{src}feed_forward.{p}.weight")
            if cfg.mlp.bias:
                out[f"{dst}mlp.{p}.bias"] = take(f"{src}feed_forward.{p}.bias")
        if kind == "attention":
            for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[f"{dst}mixer.{p}.weight"] = take(f"{src}self_attn.{p}.weight")
                if cfg.attention.bias:
                    out[f"{dst}mixer.{p}.bias"] = take(f"{src}self_attn.{p}.bias")
        else:
            out.update(mamba2_sources(cfg, f"{src}mamba.", f"{dst}mixer."))
    return out
