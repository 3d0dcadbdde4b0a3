"""The layout of each layer kind's state, derived from the config alone.

A `StateSpec` gives the shapes (without the batch axis) of a layer's fixed-size `recurrent` tensors and
of its attention `cache` tensors, whose token axis is marked `TOKEN_AXIS`. `ModelState` validates
tensors against it without building the model. Adding a layer kind = one entry in `STATE_SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hybrid_agent.model.config import HybridConfig

TOKEN_AXIS = -1  # placeholder for the token axis in a cache shape


@dataclass(frozen=True)
class StateSpec:
    """Shapes (without the batch axis) of one layer's state. Cache shapes mark the token axis with -1."""

    recurrent: dict[str, tuple[int, ...]] = field(default_factory=dict)
    cache: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _attention_spec(cfg: HybridConfig) -> StateSpec:
    a = cfg.attention
    assert a.n_kv_heads and a.head_dim
    kv = (a.n_kv_heads, TOKEN_AXIS, a.head_dim)  # stored (B, Hkv, L, Dh): the layout SDPA reads
    return StateSpec(cache={"k": kv, "v": kv})


def _mamba2_spec(cfg: HybridConfig) -> StateSpec:
    m = cfg.mamba2
    assert m.head_dim and m.d_state
    return StateSpec(
        recurrent={
            "conv": (cfg.mamba2_conv_dim, m.d_conv - 1),
            "ssm": (cfg.mamba2_heads, m.head_dim, m.d_state),
        }
    )


def _gated_deltanet_spec(cfg: HybridConfig) -> StateSpec:
    g = cfg.gated_deltanet
    assert g.n_v_heads and g.head_k_dim and g.head_v_dim
    return StateSpec(
        recurrent={
            "conv": (cfg.gdn_conv_dim, g.d_conv - 1),
            "recurrent": (g.n_v_heads, g.head_k_dim, g.head_v_dim),  # key-first, as the kernels keep it
        }
    )


def _mla_spec(cfg: HybridConfig) -> StateSpec:
    la = cfg.mla
    assert la.kv_lora_rank and la.qk_rope_head_dim
    # Only the compressed latent (after kv_a_layernorm) and the shared RoPE key (after RoPE): model/mla.py.
    return StateSpec(
        cache={"latent": (TOKEN_AXIS, la.kv_lora_rank), "k_rope": (TOKEN_AXIS, la.qk_rope_head_dim)}
    )


def _short_conv_spec(cfg: HybridConfig) -> StateSpec:
    channels = cfg.short_conv.channels or cfg.d_model
    return StateSpec(recurrent={"conv": (channels, cfg.short_conv.d_conv - 1)})  # the last inputs B*x


def _kda_spec(cfg: HybridConfig) -> StateSpec:
    c = cfg.kda
    assert c.n_heads and c.head_dim
    dim = c.n_heads * c.head_dim
    return StateSpec(
        recurrent={"conv": (3 * dim, c.d_conv - 1), "recurrent": (c.n_heads, c.head_dim, c.head_dim)}
    )


def _parallel_spec(cfg: HybridConfig) -> StateSpec:
    attention = _mla_spec(cfg) if cfg.parallel_attention == "mla" else _attention_spec(cfg)
    return StateSpec(recurrent=_mamba2_spec(cfg).recurrent, cache=attention.cache)


# The state layout of each layer kind (see config.LAYER_TYPES).
STATE_SPECS: dict[str, Callable[[HybridConfig], StateSpec]] = {
    "attention": _attention_spec,
    "mamba2": _mamba2_spec,
    "gated_deltanet": _gated_deltanet_spec,
    "parallel": _parallel_spec,
    "mlp": lambda cfg: StateSpec(),
    "mla": _mla_spec,
    "short_conv": _short_conv_spec,
    "kda": _kda_spec,
}


def state_layout(cfg: HybridConfig) -> tuple[tuple[str, StateSpec], ...]:
    return tuple((kind, STATE_SPECS[kind](cfg)) for kind in cfg.layer_types)


def empty_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A cache shape holding no token."""
    return tuple(0 if d == TOKEN_AXIS else d for d in shape)


def token_axis(shape: tuple[int, ...]) -> int:
    return 1 + shape.index(TOKEN_AXIS)  # +1 for the batch axis


def token_axes(spec: StateSpec) -> dict[str, int]:
    return {n: token_axis(s) for n, s in spec.cache.items()}


TENSOR_PARALLEL_KEY = "tensor_parallel"


def layout_metadata(cfg: HybridConfig, tp: int = 1) -> dict[str, str]:
    """Every layout decision behind the state's tensors, as safetensors metadata (`{name: text}`).

    `tp` > 1: written by that many tensor-parallel ranks (model/parallel.py). Their tensors are still
    stored in the full (tp=1) layout, gathered from the ranks on save and re-split on load, so the
    `TENSOR_PARALLEL_KEY` entry records where the state came from and a reader at any tp reads it.

    Written beside the tensors of a saved state so that a reader (or a converter to another runtime)
    never has to guess: which axis of a recurrent state is the key, how wide a conv window is, what
    dtype each tensor keeps. Keys are the tensor names of `ModelState.to_tensors()`.
    """
    out = {"format": "hybrid-agent state 1; recurrent tensors fp32, caches in the model's dtype"}
    for i, (kind, spec) in enumerate(state_layout(cfg)):
        for name, shape in spec.recurrent.items():
            dims = ", ".join(map(str, shape))
            if name == "conv":
                what = {"gated_deltanet": "q|k|v", "kda": "q|k|v", "short_conv": "B*x"}.get(kind, "x|B|C")
                text = f"conv window (batch, channels {what}, d_conv - 1) = (batch, {dims}), oldest first"
            elif name == "ssm":
                text = f"SSM state (batch, heads, head_dim, d_state) = (batch, {dims}), value-first: y = S C"
            else:
                text = f"delta-rule state (batch, v_heads, d_k, d_v) = (batch, {dims}), key-first: o = S^T q"
            out[f"layers.{i}.{name}"] = f"{kind} {text}; fp32"
        for name, shape in spec.cache.items():
            dims = ", ".join("tokens" if d == TOKEN_AXIS else str(d) for d in shape)
            out[f"layers.{i}.{name}"] = f"{kind} cache {name!r}: (batch, {dims}) in the model's dtype"
        if spec.cache:
            out[f"layers.{i}.pos"] = f"{kind} cache positions: (tokens,) int64, absolute"
    if tp > 1:
        out[TENSOR_PARALLEL_KEY] = (
            f"written by {tp} tensor-parallel ranks; tensors in the full (tp=1) layout, gathered from "
            "the ranks (heads, conv channels and groups split as model/parallel.py's state_rules say)"
        )
    return out
