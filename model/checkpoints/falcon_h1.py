"""Falcon-H1 (TII): attention and Mamba-2 side by side in every layer, with muP multipliers.

transformers: `FalconH1ForCausalLM`. A layer is `h = x + ssm_out * mamba(n) + attn_out * attn(attn_in * n)`
with `n = input_layernorm(x)`, then a SwiGLU MLP with `gate_multiplier` and `down_multiplier`.

Every multiplier multiplies a linear map, so it is folded into that map's weights here (in fp32, before
the cast to the target dtype) and the model core runs a plain `parallel` layer:
- embedding_multiplier into the embedding, lm_head_multiplier into the LM head (untied when they differ);
- attention_in_multiplier into q/k/v (weights only: it scales the input), key_multiplier into k;
- the per-segment `ssm_multipliers` (z, x, B, C, dt of in_proj's output) and ssm_in_multiplier into
  in_proj;
- our parallel mixer mixes its branches as `0.5 * attn + 0.5 * mamba` (gate fixed at 0, sigmoid(0) =
  0.5 exactly), so each output projection gets `2 * multiplier`.
"""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model.checkpoints.plan import Source, constant, dt_limit, get, rope_theta, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "falcon_h1"


def _d_inner(hf: dict[str, Any]) -> int:
    return get(hf, "mamba_d_ssm", get(hf, "mamba_expand", 2) * hf["hidden_size"])


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    d_inner, n_heads = _d_inner(hf), get(hf, "mamba_n_heads", 128)
    head_dim = hf.get("mamba_d_head")
    head_dim = d_inner // n_heads if head_dim in (None, "auto") else head_dim
    tied = get(hf, "tie_word_embeddings", False)
    same_scale = get(hf, "embedding_multiplier", 1.0) == get(hf, "lm_head_multiplier", 1.0) == 1.0
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=["parallel"] * hf["num_hidden_layers"],
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", d // heads),
            "rope_theta": rope_theta(hf),
            "bias": get(hf, "attention_bias", False),
        },
        mamba2={
            "d_inner": d_inner,
            "head_dim": head_dim,
            "d_state": get(hf, "mamba_d_state", 256),
            "n_groups": get(hf, "mamba_n_groups", 1),
            "d_conv": get(hf, "mamba_d_conv", 4),
            "chunk_size": get(hf, "mamba_chunk_size", 256),
            "conv_bias": get(hf, "mamba_conv_bias", True),
            # in_proj's bias is `mamba_proj_bias`, out_proj's `projectors_bias`: ours has both or neither,
            # and a missing one loads as zeros.
            "bias": bool(get(hf, "mamba_proj_bias", False) or get(hf, "projectors_bias", False)),
            "norm_before_gate": get(hf, "mamba_norm_before_gate", True),
            "gated_norm": get(hf, "mamba_rms_norm", False),
            "dt_limit": dt_limit(hf.get("time_step_limit")),
        },
        mlp={"hidden_dim": hf["intermediate_size"], "bias": get(hf, "mlp_bias", False)},
        norm_eps=get(hf, "rms_norm_eps", 1e-5),
        tie_embeddings=tied and same_scale,
    )


def _mup_vector(cfg: HybridConfig, hf: dict[str, Any]) -> torch.Tensor:
    """The per-row multiplier of in_proj's output: z, x, B, C, dt segments (transformers' mup_vector)."""
    m = cfg.mamba2
    assert m.d_state is not None
    e, gn = cfg.mamba2_d_inner, m.n_groups * m.d_state
    mults = get(hf, "ssm_multipliers", [1.0] * 5)
    sizes = [e, e, gn, gn, cfg.mamba2_heads]
    return torch.cat([torch.full((n,), float(k)) for n, k in zip(sizes, mults, strict=True)])  # (rows,)


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    emb_mult, lm_mult = get(hf, "embedding_multiplier", 1.0), get(hf, "lm_head_multiplier", 1.0)
    attn_in, attn_out = get(hf, "attention_in_multiplier", 1.0), get(hf, "attention_out_multiplier", 1.0)
    key_mult = get(hf, "key_multiplier", 1.0)
    ssm_in, ssm_out = get(hf, "ssm_in_multiplier", 1.0), get(hf, "ssm_out_multiplier", 1.0)
    gate_mult, down_mult = get(hf, "mlp_multipliers", [1.0, 1.0])
    mup = _mup_vector(cfg, hf)
    out = {
        "embed_tokens.weight": take("model.embed_tokens.weight", scale=emb_mult),
        "norm.weight": take("model.final_layernorm.weight"),
    }
    if not cfg.tie_embeddings:
        # Tied in the checkpoint but scaled differently here: the head is the embedding, scaled.
        tied = ("model.embed_tokens.weight",) if get(hf, "tie_word_embeddings", False) else ()
        out["lm_head.weight"] = take("lm_head.weight", *tied, scale=lm_mult)
    d = cfg.d_model
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = take(f"{src}input_layernorm.weight")
        out[f"{dst}mlp_norm.weight"] = take(f"{src}pre_ff_layernorm.weight")
        ff, mlp = f"{src}feed_forward.", f"{dst}mlp."
        out[f"{mlp}gate_proj.weight"] = take(f"{ff}gate_proj.weight", scale=gate_mult)
        out[f"{mlp}up_proj.weight"] = take(f"{ff}up_proj.weight")
        out[f"{mlp}down_proj.weight"] = take(f"{ff}down_proj.weight", scale=down_mult)
        if cfg.mlp.bias:
            out[f"{mlp}gate_proj.bias"] = take(f"{ff}gate_proj.bias", scale=gate_mult)
            out[f"{mlp}up_proj.bias"] = take(f"{ff}up_proj.bias")
            out[f"{mlp}down_proj.bias"] = take(f"{ff}down_proj.bias", scale=down_mult)
        out[f"{dst}mixer.gate"] = constant(lambda: torch.zeros(d))  # sigmoid(0) = 0.5: an even mix

        a, att = f"{src}self_attn.", f"{dst}mixer.attention."
        out[f"{att}q_proj.weight"] = take(f"{a}q_proj.weight", scale=attn_in)
        out[f"{att}k_proj.weight"] = take(f"{a}k_proj.weight", scale=attn_in * key_mult)
        out[f"{att}v_proj.weight"] = take(f"{a}v_proj.weight", scale=attn_in)
        out[f"{att}o_proj.weight"] = take(f"{a}o_proj.weight", scale=2.0 * attn_out)
        if cfg.attention.bias:
            out[f"{att}q_proj.bias"] = take(f"{a}q_proj.bias")
            out[f"{att}k_proj.bias"] = take(f"{a}k_proj.bias", scale=key_mult)
            out[f"{att}v_proj.bias"] = take(f"{a}v_proj.bias")
            out[f"{att}o_proj.bias"] = take(f"{a}o_proj.bias", scale=2.0 * attn_out)

        m, mam = f"{src}mamba.", f"{dst}mixer.mamba."
        out[f"{mam}in_proj.weight"] = take(f"{m}in_proj.weight", scale=mup[:, None] * ssm_in)
        out[f"{mam}out_proj.weight"] = take(f"{m}out_proj.weight", scale=2.0 * ssm_out)
        if cfg.mamba2.bias:
            out[f"{mam}in_proj.bias"] = take(f"{m}in_proj.bias", scale=mup, optional=True)
            out[f"{mam}out_proj.bias"] = take(f"{m}out_proj.bias", scale=2.0 * ssm_out, optional=True)
        for n in ("conv1d.weight", "dt_bias", "A_log", "D"):
            out[f"{mam}{n}"] = take(f"{m}{n}")
        if cfg.mamba2.conv_bias:
            out[f"{mam}conv1d.bias"] = take(f"{m}conv1d.bias")
        if cfg.mamba2.gated_norm:
            out[f"{mam}norm.weight"] = take(f"{m}norm.weight")
    return out
