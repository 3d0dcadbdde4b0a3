"""The models bench/gpu_families.py runs: transformers' Qwen3.5 dense (Qwen3.5-9B's shape, the defaults
of `Qwen3_5TextConfig`) and Qwen3.5-MoE (Qwen3.5-35B-A3B's shape, the defaults of
`Qwen3_5MoeTextConfig`) with their own random init, ours built from that model's state dict through
the qwen3_5 adapter (model/checkpoints/qwen3_5.py), reading transformers' tensors in place wherever the
adapter only slices them (the MoE's gate|up experts too), so both models fit one card; toy shapes for
the CPU smoke run. Also the bytes a decode step must read (the floor), with only the active experts.
"""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.checkpoints import qwen3_5
from hybrid_agent.model.checkpoints.plan import Source
from hybrid_agent.model.moe import MoE
from hybrid_agent.model.rope import rope_inv_freq

# The smoke run's toy shapes: the same layer pattern (3 Gated DeltaNet : 1 attention), head layout
# (value heads twice the key heads, GQA, partial RoPE, output gate) and, for the MoE, top-k of E plus a
# shared expert, at sizes a CPU runs in a second.
_TINY_COMMON = dict(
    vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, pad_token_id=0, eos_token_id=1,
)  # fmt: skip
TINY = {
    "dense": dict(_TINY_COMMON, intermediate_size=128),
    "moe": dict(_TINY_COMMON, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=32,
                shared_expert_intermediate_size=32),
}  # fmt: skip
# What each shape stands for (the configs' defaults are these checkpoints' text models).
NAMES = {"dense": "Qwen3.5-9B", "moe": "Qwen3.5-35B-A3B"}
# The same shapes written out (transformers' defaults, checked equal by tests/engine/test_bench_families.py),
# so ours can be built where the installed transformers has no Qwen3.5 (then without transformers' side).
_LINEAR = dict(
    linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
)  # fmt: skip
FULL = {
    "dense": dict(vocab_size=248320, hidden_size=4096, num_hidden_layers=32, num_attention_heads=16,
                  num_key_value_heads=4, head_dim=256, intermediate_size=12288, **_LINEAR),
    "moe": dict(vocab_size=248320, hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
                num_key_value_heads=2, head_dim=256, num_experts=256, num_experts_per_tok=8,
                moe_intermediate_size=512, shared_expert_intermediate_size=512, **_LINEAR),
}  # fmt: skip
_ROPE = {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.25}, "rms_norm_eps": 1e-6}


def our_config(shape: str, tiny: bool) -> HybridConfig:
    """Our config of the shape through the qwen3_5 adapter, from the written-out text config."""
    text = {**(TINY if tiny else FULL)[shape], **_ROPE}
    return qwen3_5.config_from_text(text, tie=False, moe={"norm_topk_prob": True})


def build_ours(shape: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> HybridLM:
    """Ours alone with its own random init, built in `dtype` directly on the device (35B parameters in
    fp32 would not fit the card)."""
    cfg = our_config(shape, tiny)
    before = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = HybridLM(cfg)
    finally:
        torch.set_default_dtype(before)
    model._fingerprint = "bench-random-qwen3.5"
    return model.eval()


def hf_config(shape: str, tiny: bool) -> Any:
    """transformers' text config of the shape: its defaults (the real model's), or the toy one."""
    from transformers import Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    cls = Qwen3_5TextConfig if shape == "dense" else Qwen3_5MoeTextConfig
    return cls(**TINY[shape]) if tiny else cls()


def build_hf(cfg: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """transformers' causal LM of `cfg` with its own random init, built directly on the device."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM

    cls = Qwen3_5MoeForCausalLM if getattr(cfg, "num_experts", 0) else Qwen3_5ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        hf = cls._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    with torch.no_grad():  # zero-centred norms start at 0 (scale 1): jitter them so a wrong fold shows
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") and "linear_attn" not in name:
                p.normal_(0.0, 0.05)
    return hf.eval()


def _resolve(src: Source, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """The adapter's tensor for one of our weights, built from transformers' tensors as they are: a
    plain take or a slice stays a view of them (no copy); the zero-centred norms' `1 + w` and the
    query / gate split are new (small) tensors."""
    names = [next((n for n in spellings if n in sd), None) for spellings in src.names]
    if None in names or not names:
        if src.fallback is None:
            raise KeyError(f"no tensor for {src.names}")
        return _resolve(src.fallback, sd)
    ts = [sd[n] for n in names]  # type: ignore[index]
    return ts[0] if src.build is None else src.build(ts)


def adopt_weights(hf: Any) -> HybridLM:
    """Our HybridLM through the qwen3_5 adapter's plan, reading transformers' tensors in place."""
    hfd = hf.config.to_dict()
    cfg = qwen3_5.hybrid_config(hfd)
    sd = dict(hf.state_dict())
    with torch.device("meta"):
        model = HybridLM(cfg)
    weights = {n: _resolve(s, sd) for n, s in qwen3_5.sources(cfg, hfd).items()}
    model.load_state_dict(weights, assign=True)
    dev = sd["lm_head.weight"].device
    for m in model.modules():  # the buffers no checkpoint holds
        if isinstance(m, Attention) and m.inv_freq is not None:
            m.register_buffer("inv_freq", rope_inv_freq(m.rope_dim, m.rope_theta).to(dev), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"weights the adapter did not fill: {left[:5]}")
    model._fingerprint = "bench-random-qwen3.5"  # hashing tens of GB of random weights costs seconds
    return model.eval()


def floor_bytes(model: HybridLM, ctx: int) -> dict[str, int]:
    """Bytes one decode step must read or write at context `ctx`: every weight except the embedding
    table (one row) and, in an MoE layer, the experts no token chose (only top_k of E are read), the
    K/V cache up to `ctx`, the recurrent states read and written (fp32)."""
    from gpu_e2e_probes import floor_bytes as all_weights

    fb = all_weights(model, ctx)
    idle = 0
    for m in model.modules():
        if isinstance(m, MoE):
            experts = sum(p.nbytes for p in m.experts.parameters())
            idle += experts * (m.n_experts - m.top_k) // m.n_experts
    out = {**fb, "weights": fb["weights"] - idle, "idle_experts": idle}
    out["total"] = out["weights"] + out["cache"] + out["recurrent"]
    return out


def describe(model: HybridLM) -> dict[str, Any]:
    c = model.config
    a, g = c.attention, c.gated_deltanet
    out = {
        "params_B": sum(p.numel() for p in model.parameters()) / 1e9,
        "d_model": c.d_model, "layers": c.n_layers, "vocab": c.vocab_size,
        "layer_types": {k: c.layer_types.count(k) for k in sorted(set(c.layer_types))},
        "attention": {"heads": a.n_heads, "kv_heads": a.n_kv_heads, "head_dim": a.head_dim,
                      "rope_fraction": a.rope_fraction, "output_gate": a.output_gate, "qk_norm": a.qk_norm},
        "gated_deltanet": {"key_heads": g.n_heads, "value_heads": g.n_v_heads, "key_dim": g.head_k_dim,
                           "value_dim": g.head_v_dim},
    }  # fmt: skip
    if c.moe.n_experts:
        out["moe"] = {"experts": c.moe.n_experts, "top_k": c.moe.top_k, "hidden": c.moe.hidden_dim,
                      "shared_hidden": c.moe.shared_hidden_dim}  # fmt: skip
    else:
        out["mlp_hidden"] = c.mlp.hidden_dim
    return out
