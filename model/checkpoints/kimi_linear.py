"""Kimi Linear (Moonshot AI): Kimi delta attention layers with latent attention (MLA, no RoPE) every few
layers, each with a SwiGLU MLP or a mixture of experts.

transformers: `KimiLinearForCausalLM` (model_type "kimi_linear"), weights under `model.`. Every layer
is pre-norm: `h = x + self_attn(input_layernorm(x))`, then `h + mlp(post_attention_layernorm(h))`.
- `linear_attention` layers are our `kda` (model/kda.py), whose weights keep their names. The Hub's
  checkpoints (and transformers' save_pretrained, which writes that format back) store the conv as
  `q_conv1d` / `k_conv1d` / `v_conv1d` (concatenated here, in that order, into our `conv1d`), the
  forget gate's f_a_proj, f_b_proj, dt_bias and A_log ((1, 1, H, 1), flattened) directly under
  `self_attn.`, and every MLP under `block_sparse_moe.`; transformers' in-memory names
  (`conv1d`, `forget_gate.`, `mlp.`) are read too. Sizes: `linear_num_heads`, `linear_head_dim`,
  `linear_conv_kernel_dim` (Hub configs nest them in `linear_attn_config` as num_heads, head_dim,
  short_conv_kernel_size).
- `full_attention` layers are our `mla` (model/mla.py, DeepSeek-V3's weight names) with
  `rope_theta=None`: Kimi Linear applies no positional encoding, the qk_rope_head_dim part of each key
  is only shared by all heads. Its q_a / kv_a norms use eps 1e-6 (our MLA default).
The layer pattern is `layer_types`, else `linear_attn_config`'s 1-based `full_attn_layers` /
`kda_layers`, else transformers' default (attention at every layer i > 0 with i % 4 == 0). MLP layers
are `mlp_layer_types`, else "dense" for the first `first_k_dense_replace` (default 1) and "sparse"
after. A sparse layer's MLP is a mixture of experts (model/moe.py, `moe.layers` lists them) with
DeepSeek-V3's selection: sigmoid scores from `gate` (E, D), the choice-only `gate.e_score_correction_bias`,
`num_expert_group` / `topk_group` grouped top-k, renormalised (`moe_renormalize`), scaled by
`routed_scaling_factor`; SwiGLU experts stored per expert (`experts.{e}.w1` gate, `w3` up, `w2` down) or
stacked (`experts.gate_up_proj`, `experts.down_proj`), plus an ungated SwiGLU `shared_experts` of
`num_shared_experts * moe_intermediate_size`. The config keys are read in the Hub's spelling
(`num_experts`, `num_experts_per_token`, ...) or transformers' attribute names.
`lm_head` is always its own weight: transformers' model ties nothing, even with `tie_word_embeddings`.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, concat, either, get, swiglu_experts, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError

FAMILY = "kimi_linear"
LAYER_KINDS = {"linear_attention": "kda", "full_attention": "mla"}  # Kimi Linear layer_types -> ours


def _layer_types(hf: dict[str, Any]) -> list[str]:
    n, lin = hf["num_hidden_layers"], hf.get("linear_attn_config") or {}
    raw = hf.get("layer_types")
    if raw is None and "full_attn_layers" in lin and "kda_layers" in lin:
        raw = [None] * n
        for i in lin["full_attn_layers"]:
            raw[i - 1] = "full_attention"
        for i in lin["kda_layers"]:
            raw[i - 1] = "linear_attention"
    if raw is None:
        raw = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(n)]
    bad = sorted({str(t) for t in raw if t not in LAYER_KINDS})
    if bad:
        raise CheckpointError(
            f"{FAMILY}: unknown layer types {bad} (only linear_attention and full_attention)"
        )
    return [LAYER_KINDS[t] for t in raw]


def _sparse_layers(hf: dict[str, Any]) -> list[int]:
    n = hf["num_hidden_layers"]
    mlp = hf.get("mlp_layer_types") or [
        "dense" if i < get(hf, "first_k_dense_replace", 1) else "sparse" for i in range(n)
    ]
    bad = sorted({t for t in mlp if t not in ("dense", "sparse")})
    if bad:
        raise CheckpointError(f"{FAMILY}: unknown mlp_layer_types {bad} (only dense and sparse)")
    return [i for i, t in enumerate(mlp) if t == "sparse"]


def _first(hf: dict[str, Any], keys: tuple[str, ...], default: Any) -> Any:
    """The value of the first of `keys` present (the Hub's spelling, then transformers' attribute)."""
    return next((hf[k] for k in keys if hf.get(k) is not None), default)


def _moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    layers = _sparse_layers(hf)
    if not layers:
        return {}
    scoring = get(hf, "moe_router_activation_func", "sigmoid")
    if scoring != "sigmoid":
        raise CheckpointError(f"{FAMILY}: moe_router_activation_func={scoring!r} is not supported (sigmoid)")
    inner = get(hf, "moe_intermediate_size", 1024)
    return {
        "n_experts": _first(hf, ("num_experts", "num_local_experts"), 256),
        "top_k": _first(hf, ("num_experts_per_token", "num_experts_per_tok"), 8),
        "hidden_dim": inner,
        "shared_hidden_dim": inner * _first(hf, ("num_shared_experts", "n_shared_experts"), 1),
        "scoring": "sigmoid",
        "score_bias": True,
        "router_fp32": True,  # transformers keeps gate.weight in fp32 (_keep_in_fp32_modules_strict)
        "n_groups": _first(hf, ("num_expert_group", "n_group"), 1),
        "topk_groups": get(hf, "topk_group", 1),
        "norm_topk_prob": _first(hf, ("moe_renormalize", "norm_topk_prob"), True),
        "routed_scaling": float(get(hf, "routed_scaling_factor", 2.446)),
        "layers": layers,
    }


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    if get(hf, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    lin = hf.get("linear_attn_config") or {}
    heads = hf["num_attention_heads"]
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        layer_types=_layer_types(hf),
        kda={
            "n_heads": get(lin, "num_heads", get(hf, "linear_num_heads", 32)),
            "head_dim": get(lin, "head_dim", get(hf, "linear_head_dim", 128)),
            "d_conv": get(lin, "short_conv_kernel_size", get(hf, "linear_conv_kernel_dim", 4)),
            "norm_eps": get(hf, "rms_norm_eps", 1e-5),
        },
        mla={
            "n_heads": heads,
            "q_lora_rank": hf.get("q_lora_rank"),
            "kv_lora_rank": get(hf, "kv_lora_rank", 512),
            "qk_nope_head_dim": get(hf, "qk_nope_head_dim", 128),
            "qk_rope_head_dim": get(hf, "qk_rope_head_dim", 64),
            "v_head_dim": get(hf, "v_head_dim", 128),
            "rope_theta": None,
            "bias": get(hf, "attention_bias", False),
            "norm_eps": 1e-6,
        },
        mlp={"hidden_dim": hf["intermediate_size"], "bias": False},
        moe=_moe_config(hf),
        norm_eps=get(hf, "rms_norm_eps", 1e-5),
        tie_embeddings=False,  # transformers never ties this family's head, whatever tie_word_embeddings says
    )


def _m(*names: str) -> Source:
    return take(*(f"model.{n}" for n in names))


def _moe_sources(cfg: HybridConfig, src: str, dst: str) -> dict[str, Source]:
    """Router, choice bias, routed experts (per expert or stacked) and shared experts of layer `src`,
    under the Hub's `block_sparse_moe.` or transformers' `mlp.`."""
    assert cfg.moe.hidden_dim is not None  # set by HybridConfig
    homes = [f"model.{src}block_sparse_moe.", f"model.{src}mlp."]

    def one(name: str) -> Source:
        return take(*(h + name for h in homes))

    out = {
        f"{dst}router.weight": one("gate.weight"),
        f"{dst}score_bias": one("gate.e_score_correction_bias"),
    }
    experts = swiglu_experts(homes, cfg.moe.n_experts, cfg.moe.hidden_dim, ("w1", "w3", "w2"))
    out |= {f"{dst}experts.{k}": v for k, v in experts.items()}
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out[f"{dst}shared_expert.{proj}.weight"] = one(f"shared_experts.{proj}.weight")
    return out


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    out = {"embed_tokens.weight": _m("embed_tokens.weight"), "norm.weight": _m("norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"layers.{i}.", f"layers.{i}."
        a = f"{src}self_attn."
        out[f"{dst}mixer_norm.weight"] = _m(f"{src}input_layernorm.weight")
        out[f"{dst}mlp_norm.weight"] = _m(f"{src}post_attention_layernorm.weight")
        if cfg.moe.used_in(i):
            out.update(_moe_sources(cfg, src, f"{dst}mlp."))
        else:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                out[f"{dst}mlp.{proj}.weight"] = _m(
                    f"{src}block_sparse_moe.{proj}.weight", f"{src}mlp.{proj}.weight"
                )
        if kind == "kda":
            for name in ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "o_proj", "o_norm"):
                out[f"{dst}mixer.{name}.weight"] = _m(f"{a}{name}.weight")
            split = concat([(f"model.{a}{x}_conv1d.weight",) for x in "qkv"])
            out[f"{dst}mixer.conv1d.weight"] = either(split, _m(f"{a}conv1d.weight"))
            for name in ("f_a_proj.weight", "f_b_proj.weight", "dt_bias"):
                out[f"{dst}mixer.{name}"] = _m(f"{a}{name}", f"{a}forget_gate.{name}")
            a_log = (f"model.{a}A_log", f"model.{a}forget_gate.A_log")
            out[f"{dst}mixer.A_log"] = Source((a_log,), lambda ts: ts[0].reshape(-1))
        else:
            params = ["weight", "bias"] if cfg.mla.bias else ["weight"]
            names = ["kv_b_proj.weight", "kv_a_layernorm.weight"]
            names += [f"{p}.{x}" for p in ("kv_a_proj_with_mqa", "o_proj") for x in params]
            if cfg.mla.q_lora_rank is None:
                names.append("q_proj.weight")
            else:
                names += ["q_b_proj.weight", "q_a_layernorm.weight"] + [f"q_a_proj.{x}" for x in params]
            for name in names:
                out[f"{dst}mixer.{name}"] = _m(f"{a}{name}")
    return out
