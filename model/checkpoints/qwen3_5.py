"""Qwen3.5 (dense): Gated DeltaNet layers with gated full attention every few layers.

transformers: `Qwen3_5ForCausalLM` (model_type "qwen3_5_text", weights under `model.`) and the
multimodal `Qwen3_5ForConditionalGeneration` (model_type "qwen3_5": the text model's config is its
`text_config`, its weights under `model.language_model.`; the vision tower and the multi-token
prediction head are not read). Both blocks are pre-norm with a SwiGLU MLP.

What is mapped at load, so the layers' math stays the one of model/attention.py and
model/gated_deltanet.py:
- Every RMSNorm of the stack (input / post-attention / final norms, QK-norm per head) is zero-centred:
  it scales by `1 + weight`. The stored weight gets 1 added here (exact in fp32). The Gated DeltaNet
  output norm is a plain one (weight as is, eps `rms_norm_eps`).
- Attention's q_proj holds, per head, the query's Dh rows then the output gate's Dh rows; they are
  split into our q_proj and g_proj (`output_gate`: out = o_proj(attn * sigmoid(gate))). RoPE is partial
  (`partial_rotary_factor`); the multimodal RoPE sections coincide with plain RoPE for text.
- Gated DeltaNet: `in_proj_qkv` is q|k|v side by side (the conv's channel order), split into our q, k, v
  projections; `in_proj_z` is the output gate (our g_proj), `in_proj_a` / `in_proj_b` the decay and
  write-strength inputs; beta = sigmoid(b) (no negative eigenvalues).
MoE variants (model_type "qwen3_5_moe", "qwen3_5_moe_text"): every layer's MLP is a mixture of experts
(model/moe.py): softmax router `mlp.gate` (E, D), top-k renormalised, routed experts stored stacked
(`mlp.experts.gate_up_proj` (E, 2I, D) gate rows first, `mlp.experts.down_proj` (E, D, I)) or per expert
(`mlp.experts.{e}.gate_proj.weight`, as transformers' save_pretrained writes them), and a shared expert
gated by sigmoid(`mlp.shared_expert_gate`).
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.model.checkpoints.plan import Source, get, rope_theta, spellings, swiglu_experts, take
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError
from torch import Tensor

FAMILY = "qwen3_5"
# The model_types this adapter reads besides FAMILY: the text model alone, and the MoE variants.
TEXT_FAMILY = "qwen3_5_text"
MOE_FAMILIES = ("qwen3_5_moe", "qwen3_5_moe_text")
_KINDS = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
# Where the language model's weights are: the text model's own names, or inside the multimodal wrapper.
_PREFIXES = ("model.", "model.language_model.")


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: `text_config` of the multimodal wrapper, else the config itself."""
    text = hf.get("text_config")
    return text if isinstance(text, dict) else hf


def hybrid_config(hf: dict[str, Any]) -> HybridConfig:
    t = text_config(hf)
    # Qwen3.5's router always renormalises the top-k weights (its config has no norm_topk_prob); the
    # wrapper's own tie flag decides (transformers ties through the top-level config).
    tie = get(hf, "tie_word_embeddings", get(t, "tie_word_embeddings", False))
    return config_from_text(t, tie=tie, moe={"norm_topk_prob": True})


def config_from_text(t: dict[str, Any], *, tie: bool, moe: dict[str, Any] | None = None) -> HybridConfig:
    """Our config from a Qwen3.5 / Qwen3-Next text config; `moe` overrides the MoE sub-config's fields."""
    d, heads = t["hidden_size"], t["num_attention_heads"]
    types = t.get("layer_types") or [
        "full_attention" if (i + 1) % get(t, "full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(t["num_hidden_layers"])
    ]
    unknown = sorted({x for x in types if x not in _KINDS})
    if unknown:
        raise CheckpointError(f"{FAMILY}: unknown layer types {unknown} in config.json layer_types")
    if get(t, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"{FAMILY}: hidden_act={t['hidden_act']!r} is not supported (only silu)")
    params = t.get("rope_parameters") if isinstance(t.get("rope_parameters"), dict) else {}
    fraction = get(params, "partial_rotary_factor", get(t, "partial_rotary_factor", 0.25))
    eps = get(t, "rms_norm_eps", 1e-6)
    return HybridConfig(
        vocab_size=t["vocab_size"],
        d_model=d,
        layer_types=[_KINDS[x] for x in types],
        attention={
            "n_heads": heads,
            "n_kv_heads": get(t, "num_key_value_heads", heads),
            "head_dim": get(t, "head_dim", d // heads),
            "rope_theta": rope_theta(t),
            "rope_fraction": fraction,
            "qk_norm": "head",
            "bias": get(t, "attention_bias", False),
            "output_gate": True,
        },
        gated_deltanet={
            "n_heads": get(t, "linear_num_key_heads", 16),
            "n_v_heads": get(t, "linear_num_value_heads", 32),
            "head_k_dim": get(t, "linear_key_head_dim", 128),
            "head_v_dim": get(t, "linear_value_head_dim", 128),
            "d_conv": get(t, "linear_conv_kernel_dim", 4),
            "conv_bias": False,
            "allow_neg_eigval": False,
            "norm_eps": eps,
        },
        mlp={"hidden_dim": get(t, "intermediate_size", get(t, "moe_intermediate_size", 0)), "bias": False},
        moe={**moe_config(t, len(types)), **(moe or {})} if get(t, "num_experts", 0) else {},
        norm_eps=eps,
        tie_embeddings=tie,
    )


def moe_config(t: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """The `moe` sub-config of a Qwen MoE text config: softmax router, gated shared expert. A layer's MLP
    is an MoE unless listed in `mlp_only_layers`, and only every `decoder_sparse_step`-th (Qwen3-Next)."""
    step, dense = get(t, "decoder_sparse_step", 1), set(get(t, "mlp_only_layers", []))
    layers = [i for i in range(n_layers) if i not in dense and (i + 1) % step == 0]
    if get(t, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act={t['hidden_act']!r} is not supported for experts (only silu)")
    shared = get(t, "shared_expert_intermediate_size", 0)
    return {
        "n_experts": t["num_experts"],
        "top_k": get(t, "num_experts_per_tok", 1),
        "hidden_dim": t["moe_intermediate_size"],
        "shared_hidden_dim": shared,
        "shared_gate": bool(shared),
        "norm_topk_prob": get(t, "norm_topk_prob", True),
        "layers": None if len(layers) == n_layers else layers,
    }


def moe_sources(cfg: HybridConfig, src: str, dst: str) -> dict[str, Source]:
    """Our MoE weights under `dst` (`layers.{i}.mlp.`) from a Qwen sparse block under `src`."""
    assert cfg.moe.hidden_dim is not None  # set by HybridConfig
    out = {f"{dst}router.weight": take(*names(f"{src}gate.weight"))}
    experts = swiglu_experts(names(src), cfg.moe.n_experts, cfg.moe.hidden_dim)
    out |= {f"{dst}experts.{k}": v for k, v in experts.items()}
    if cfg.moe.shared_hidden_dim:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out[f"{dst}shared_expert.{proj}.weight"] = take(*names(f"{src}shared_expert.{proj}.weight"))
        out[f"{dst}shared_expert_gate.weight"] = take(*names(f"{src}shared_expert_gate.weight"))
    return out


def names(name: str) -> tuple[str, ...]:
    """The accepted spellings of a text-model weight name (own names, or inside the multimodal wrapper)."""
    return spellings(name, _PREFIXES)


def _centred(name: str) -> Source:
    """A zero-centred RMSNorm weight (used as 1 + w), stored as the plain norm's weight."""
    return Source((names(name),), lambda ts: ts[0] + 1.0)


def _rows(name: str, pick: Any) -> Source:
    return Source((names(name),), lambda ts: pick(ts[0]))


def _query_gate(name: str, cfg: HybridConfig, which: int) -> Source:
    """Query (which=0) or output gate (1) rows of the attention q_proj, stored per head as [q | gate]."""
    H, Dh = cfg.attention.n_heads, cfg.attention.head_dim
    assert H and Dh

    def pick(t: Tensor) -> Tensor:
        return t.reshape(H, 2, Dh, *t.shape[1:])[:, which].reshape(H * Dh, *t.shape[1:])

    return _rows(name, pick)


def sources(cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]:
    return stack_sources(cfg, _split_gdn)


def stack_sources(cfg: HybridConfig, gdn: Any) -> dict[str, Source]:
    """Every weight of a Qwen3.5-shaped stack (Qwen3-Next's too); `gdn(cfg, src, dst)` maps a Gated
    DeltaNet layer's input projections, which the two families store differently."""
    out = {
        "embed_tokens.weight": take(*names("embed_tokens.weight")),
        "norm.weight": _centred("norm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        src, dst = f"layers.{i}.", f"layers.{i}."
        out[f"{dst}mixer_norm.weight"] = _centred(f"{src}input_layernorm.weight")
        out[f"{dst}mlp_norm.weight"] = _centred(f"{src}post_attention_layernorm.weight")
        if cfg.moe.used_in(i):
            out |= moe_sources(cfg, f"{src}mlp.", f"{dst}mlp.")
        else:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                out[f"{dst}mlp.{proj}.weight"] = take(*names(f"{src}mlp.{proj}.weight"))
        if kind == "attention":
            a = f"{src}self_attn."
            params = ["weight", "bias"] if cfg.attention.bias else ["weight"]
            for p in params:
                out[f"{dst}mixer.q_proj.{p}"] = _query_gate(f"{a}q_proj.{p}", cfg, 0)
                out[f"{dst}mixer.g_proj.{p}"] = _query_gate(f"{a}q_proj.{p}", cfg, 1)
                for proj in ("k_proj", "v_proj", "o_proj"):
                    out[f"{dst}mixer.{proj}.{p}"] = take(*names(f"{a}{proj}.{p}"))
            out[f"{dst}mixer.q_norm.weight"] = _centred(f"{a}q_norm.weight")
            out[f"{dst}mixer.k_norm.weight"] = _centred(f"{a}k_norm.weight")
        else:
            g = f"{src}linear_attn."
            out |= gdn(cfg, g, f"{dst}mixer.")
            out[f"{dst}mixer.o_proj.weight"] = take(*names(f"{g}out_proj.weight"))
            out[f"{dst}mixer.o_norm.weight"] = take(*names(f"{g}norm.weight"))
            out[f"{dst}mixer.A_log"] = take(*names(f"{g}A_log"))
            out[f"{dst}mixer.dt_bias"] = take(*names(f"{g}dt_bias"))
            out[f"{dst}mixer.conv1d.weight"] = take(*names(f"{g}conv1d.weight"))
    return out


def _split_gdn(cfg: HybridConfig, g: str, dst: str) -> dict[str, Source]:
    """Qwen3.5's Gated DeltaNet inputs: `in_proj_qkv` q|k|v side by side, z, a and b apart."""
    kd, vd = cfg.gdn_key_dim, cfg.gdn_value_dim
    qkv = f"{g}in_proj_qkv.weight"
    return {
        f"{dst}q_proj.weight": _rows(qkv, lambda t: t[:kd]),
        f"{dst}k_proj.weight": _rows(qkv, lambda t: t[kd : 2 * kd]),
        f"{dst}v_proj.weight": _rows(qkv, lambda t: t[2 * kd : 2 * kd + vd]),
        f"{dst}a_proj.weight": take(*names(f"{g}in_proj_a.weight")),
        f"{dst}b_proj.weight": take(*names(f"{g}in_proj_b.weight")),
        f"{dst}g_proj.weight": take(*names(f"{g}in_proj_z.weight")),
    }
