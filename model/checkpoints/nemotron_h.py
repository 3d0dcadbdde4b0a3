"""Nemotron-H (NVIDIA): Mamba-2, attention, MLP and mixture-of-experts layers from a layer pattern.

transformers: `NemotronHForCausalLM`. Every layer is `x + mixer(norm(x))` with exactly one mixer: a Mamba-2
mixer, attention without positional encoding, or a squared-ReLU MLP (`down(relu(up(x))^2)`). Here mixer
layers carry no MLP of their own (`mlp.in_mixer_layers=False`) and the MLP layers are `mlp` layers.
The layer pattern comes as `layers_block_type` or, in older configs, `hybrid_override_pattern`
(`M` Mamba-2, `*` attention, `-` MLP, `E` MoE). Weights are under `backbone.` (released) or `model.`.
Its Mamba-2 scan clamps dt to `time_step_limit` (`mamba_dt_limit` in older configs; default (0, inf), no
clamp), as NVIDIA's kernels and transformers >= 5.25 do; `time_step_min`/`time_step_max` only set dt's init.

MoE layers (`E`, Nemotron 3 Nano) are `mlp` layers whose MLP is a mixture of experts (model/moe.py,
`moe.layers` lists them) with DeepSeek-V3's selection: sigmoid scores from `mixer.gate` (E, D), the
choice-only `mixer.gate.e_score_correction_bias`, `n_group` / `topk_group` grouped top-k, renormalised
(`norm_topk_prob`) and scaled by `routed_scaling_factor`. Experts and the ungated `mixer.shared_experts`
are squared-ReLU MLPs like the dense ones (no gate); the routed experts are stored per expert
(`mixer.experts.{e}.up_proj.weight`) or stacked (`mixer.experts.up_proj` (E, I, D), transformers 5).
With `moe_latent_size` (Nemotron 3 Super) the routed experts work in that latent space: the layer's
input is projected down by `mixer.fc1_latent_proj` before them and their weighted sum back up by
`mixer.fc2_latent_proj` (both with `mlp_bias`); the router and the shared expert read the input itself
(`moe.latent_dim`, model/moe.py).
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import (
    MAMBA2_WEIGHTS,
    Source,
    dt_limit,
    either,
    get,
    spellings,
    stacked,
    take,
)
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
    bad = sorted(
        {t for t, k in zip(raw, kinds, strict=True) if k not in ("mamba2", "attention", "mlp", "moe")}
    )
    if bad:
        raise CheckpointError(f"{FAMILY}: unknown layer types {bad} in the layer pattern")
    return kinds


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    for key, want in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
        if get(hf, key, want) != want:
            raise CheckpointError(f"{FAMILY}: {key}={hf[key]!r} is not supported (only {want})")
    heads, head_dim = hf["num_attention_heads"], get(hf, "mamba_head_dim", 64)
    kinds = _layer_types(hf)
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        layer_types=["mlp" if k == "moe" else k for k in kinds],
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
            "hidden_dim": get(hf, "intermediate_size", get(hf, "moe_intermediate_size", 0)),
            "bias": get(hf, "mlp_bias", False),
        },
        moe=_moe_config(hf, [i for i, k in enumerate(kinds) if k == "moe"]),
        norm_eps=get(hf, "layer_norm_epsilon", 1e-5),
        tie_embeddings=get(hf, "tie_word_embeddings", False),
    )


def _moe_config(hf: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    if not layers:
        return {}
    latent = hf.get("moe_latent_size")
    if latent is not None and (not isinstance(latent, int) or isinstance(latent, bool) or latent < 1):
        raise CheckpointError(f"{FAMILY}: moe_latent_size={latent!r} is not a positive integer")
    return {
        "n_experts": get(hf, "n_routed_experts", get(hf, "num_local_experts", 8)),
        "top_k": get(hf, "num_experts_per_tok", 2),
        "hidden_dim": get(hf, "moe_intermediate_size", 7688),
        "shared_hidden_dim": get(hf, "moe_shared_expert_intermediate_size", 7688),
        "scoring": "sigmoid",
        "score_bias": True,
        "router_fp32": True,  # transformers keeps gate.weight in fp32 (_keep_in_fp32_modules_strict)
        "n_groups": get(hf, "n_group", 1),
        "topk_groups": get(hf, "topk_group", 1),
        "norm_topk_prob": get(hf, "norm_topk_prob", True),
        "routed_scaling": float(get(hf, "routed_scaling_factor", 1.0)),
        "layers": layers,
        "latent_dim": latent or 0,
    }


def _moe_sources(cfg: HybridConfig, src: str, dst: str, t: Any) -> dict[str, Source]:
    """Router, choice bias, routed experts (per expert or stacked), the shared expert and the latent
    projections (with `moe.latent_dim`) of `src`."""
    out = {
        f"{dst}router.weight": t(f"{src}gate.weight"),
        f"{dst}score_bias": t(f"{src}gate.e_score_correction_bias"),
    }
    for proj in ("up_proj", "down_proj"):
        each = stacked(
            [spellings(f"{src}experts.{e}.{proj}.weight", PREFIXES) for e in range(cfg.moe.n_experts)]
        )
        out[f"{dst}experts.{proj}"] = either(t(f"{src}experts.{proj}"), each)
    names = ["up_proj.weight", "down_proj.weight"] + (
        ["up_proj.bias", "down_proj.bias"] if cfg.mlp.bias else []
    )
    out.update({f"{dst}shared_expert.{n}": t(f"{src}shared_experts.{n}") for n in names})
    if cfg.moe.latent_dim:
        params = ["weight", "bias"] if cfg.mlp.bias else ["weight"]
        for ours, theirs in (("latent_in", "fc1_latent_proj"), ("latent_out", "fc2_latent_proj")):
            out.update({f"{dst}{ours}.{p}": t(f"{src}{theirs}.{p}") for p in params})
    return out


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    def t(name: str) -> Source:
        return take(*spellings(name, PREFIXES))

    out = {"embed_tokens.weight": t("embeddings.weight"), "norm.weight": t("norm_f.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"layers.{i}.", f"layers.{i}."
        if kind == "mlp" and cfg.moe.used_in(i):
            out[f"{dst}mlp_norm.weight"] = t(f"{src}norm.weight")
            out.update(_moe_sources(cfg, f"{src}mixer.", f"{dst}mlp.", t))
            continue
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
