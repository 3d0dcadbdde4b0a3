"""Pure Mamba-2: transformers' `Mamba2ForCausalLM`, and the original state-spaces checkpoints.

Both are a stack of pre-norm blocks `x + mixer(norm(x))` with no MLP; the mixer's weights have the same
names in both formats (`in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm`, `out_proj`). They differ in
the config keys (`hidden_size`/`num_hidden_layers` vs `d_model`/`n_layer` + `ssm_cfg`) and in the
embedding's name (`embeddings` vs `embedding`). A state-spaces config is recognised by its `d_model`.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import MAMBA2_WEIGHTS, Source, dt_limit, get, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "mamba2"


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    if "d_model" in hf:
        return _state_spaces_config(hf)
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    d = hf["hidden_size"]
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        layer_types=["mamba2"] * hf["num_hidden_layers"],
        mamba2={
            "expand": get(hf, "expand", 2),
            "d_inner": hf["num_heads"] * hf["head_dim"],
            "head_dim": hf["head_dim"],
            "d_state": get(hf, "state_size", 128),
            "n_groups": get(hf, "n_groups", 1),
            "d_conv": get(hf, "conv_kernel", 4),
            "chunk_size": get(hf, "chunk_size", 256),
            "conv_bias": get(hf, "use_conv_bias", True),
            "bias": get(hf, "use_bias", False),
            "dt_limit": dt_limit(hf.get("time_step_limit")),
        },
        mlp={"enabled": False},
        norm_eps=get(hf, "layer_norm_epsilon", 1e-5),
        tie_embeddings=get(hf, "tie_word_embeddings", False),
    )


def _state_spaces_config(hf: dict[str, Any]) -> HybridConfig:
    ssm = dict(hf.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba2") != "Mamba2":
        raise CheckpointError(f"{FAMILY}: ssm_cfg.layer={ssm['layer']!r}; only Mamba2 checkpoints load here")
    if hf.get("attn_layer_idx") or hf.get("d_intermediate"):
        raise CheckpointError(f"{FAMILY}: state-spaces checkpoints with attention or MLP are unsupported")
    if not hf.get("rms_norm", True) or ssm.get("rmsnorm", True) is False:
        raise CheckpointError(f"{FAMILY}: only RMSNorm state-spaces checkpoints are supported")
    d, multiple = hf["d_model"], hf.get("pad_vocab_size_multiple", 1)
    vocab = -(-hf["vocab_size"] // multiple) * multiple  # the embedding is padded to this
    expand, head_dim = ssm.get("expand", 2), ssm.get("headdim", 64)
    return HybridConfig(
        vocab_size=vocab,
        d_model=d,
        layer_types=["mamba2"] * hf["n_layer"],
        mamba2={
            "expand": expand,
            "d_inner": ssm.get("d_ssm") or expand * d,
            "head_dim": head_dim,
            "d_state": ssm.get("d_state", 128),
            "n_groups": ssm.get("ngroups", 1),
            "d_conv": ssm.get("d_conv", 4),
            "chunk_size": ssm.get("chunk_size", 256),
            "conv_bias": ssm.get("conv_bias", True),
            "bias": ssm.get("bias", False),
            "norm_before_gate": ssm.get("norm_before_gate", False),
            "dt_limit": dt_limit(ssm.get("dt_limit")),
        },
        mlp={"enabled": False},
        norm_eps=hf.get("norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_embeddings", True),
    )


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    out = {
        "embed_tokens.weight": take("backbone.embeddings.weight", "backbone.embedding.weight"),
        "norm.weight": take("backbone.norm_f.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.n_layers):
        src, dst = f"backbone.layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = take(f"{src}norm.weight")
        names = list(MAMBA2_WEIGHTS)
        names += ["conv1d.bias"] if cfg.mamba2.conv_bias else []
        names += ["in_proj.bias", "out_proj.bias"] if cfg.mamba2.bias else []
        for n in names:
            out[f"{dst}mixer.{n}"] = take(f"{src}mixer.{n}")
    return out
