"""Nemotron-H (NVIDIA), dense variants: Mamba-2, attention and MLP layers from a layer pattern.

transformers: `NemotronHForCausalLM`. Every layer is `x + mixer(norm(x))` with exactly one mixer: a Mamba-2
mixer, attention without positional encoding, or a squared-ReLU MLP (`down(relu(up(x))^2)`). Here mixer
layers carry no MLP of their own (`mlp.in_mixer_layers=False`) and the MLP layers are `mlp` layers.
The layer pattern comes as `layers_block_type` or, in older configs, `hybrid_override_pattern`
(`M` Mamba-2, `*` attention, `-` MLP, `E` MoE). Weights are under `backbone.` (released) or `model.`.
Its Mamba-2 scan clamps dt to `time_step_limit` (`mamba_dt_limit` in older configs; default (0, inf), no
clamp), as NVIDIA's kernels and transformers >= 5.25 do; `time_step_min`/`time_step_max` only set dt's init.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import MAMBA2_WEIGHTS, Source, dt_limit, get, spellings, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "nemotron_h"
PREFIXES = ("backbone.", "model.")
_KINDS = {
    "M": "mamba2", "mamba": "mamba2", "linear_attention": "mamba2",
    "*": "attention", "attention": "attention", "full_attention": "attention",
    "-": "mlp", "mlp": "mlp",
    "E": "moe", "moe": "moe",
}  # fmt: skip


def _layer_types(hf: dict[str, Any]) -> list[str]:
    raw = hf.get("layers_block_type") or list(hf.get("hybrid_override_pattern") or "")
    if not raw:
        raise CheckpointError(f"{FAMILY}: config.json has no layers_block_type nor hybrid_override_pattern")
    kinds = [_KINDS.get(t, t) for t in raw]
    if "moe" in kinds:
        raise CheckpointError(f"{FAMILY}: mixture-of-experts layers are unsupported; use a dense Nemotron-H")
    bad = sorted({t for t, k in zip(raw, kinds, strict=True) if k not in ("mamba2", "attention", "mlp")})
    if bad:
        raise CheckpointError(f"{FAMILY}: unknown layer types {bad} in the layer pattern")
    return kinds


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    for key, want in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
        if get(hf, key, want) != want:
            raise CheckpointError(f"{FAMILY}: {key}={hf[key]!r} is not supported (only {want})")
    heads, head_dim = hf["num_attention_heads"], get(hf, "mamba_head_dim", 64)
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        layer_types=_layer_types(hf),
        attention={
            "n_heads": heads,
            "n_kv_heads": get(hf, "num_key_value_heads", heads),
            "head_dim": get(hf, "head_dim", hf["hidden_size"] // heads),
            "rope_theta": None,
            "bias": False,  # transformers builds these projections without bias whatever the config says
        },
        mamba2={
            "d_inner": get(hf, "mamba_num_heads", 128) * head_dim,
            "head_dim": head_dim,
            "d_state": get(hf, "ssm_state_size", 128),
            "n_groups": get(hf, "n_groups", get(hf, "mamba_n_groups", 8)),
            "d_conv": get(hf, "conv_kernel", get(hf, "mamba_d_conv", 4)),
            "chunk_size": get(hf, "chunk_size", 128),
            "conv_bias": get(hf, "use_conv_bias", True),
            "bias": get(hf, "use_bias", False),
            "dt_limit": dt_limit(get(hf, "time_step_limit", hf.get("mamba_dt_limit"))),
        },
        mlp={
            "in_mixer_layers": False,
            "activation": "relu2",
            "hidden_dim": hf["intermediate_size"],
            "bias": get(hf, "mlp_bias", False),
        },
        norm_eps=get(hf, "layer_norm_epsilon", 1e-5),
        tie_embeddings=get(hf, "tie_word_embeddings", False),
    )


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    def t(name: str) -> Source:
        return take(*spellings(name, PREFIXES))

    out = {"embed_tokens.weight": t("embeddings.weight"), "norm.weight": t("norm_f.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"layers.{i}.", f"layers.{i}."
        if kind == "mlp":
            out[f"{dst}mlp_norm.weight"] = t(f"{src}norm.weight")
            names = ["up_proj.weight", "down_proj.weight"]
            names += ["up_proj.bias", "down_proj.bias"] if cfg.mlp.bias else []
            out.update({f"{dst}mlp.{n}": t(f"{src}mixer.{n}") for n in names})
            continue
        out[f"{dst}mixer_norm.weight"] = t(f"{src}norm.weight")
        if kind == "attention":
            names = [f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        else:
            names = list(MAMBA2_WEIGHTS)
            names += ["conv1d.bias"] if cfg.mamba2.conv_bias else []
            names += ["in_proj.bias", "out_proj.bias"] if cfg.mamba2.bias else []
        out.update({f"{dst}mixer.{n}": t(f"{src}mixer.{n}") for n in names})
    return out
