"""How an adapter says where each of our weights comes from: a `Source` per parameter name.

A family's adapter maps its `config.json` to a `HybridConfig` and lists, for every parameter of our
`HybridLM`, the checkpoint tensors it is made of and how (taken as is, scaled, concatenated, or zeros
when an optional tensor is absent). Renamed and fused weights, folded multipliers and alternative
spellings are all expressed here, so the model core never knows which checkpoint it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError
from torch import Tensor

# The Mamba-2 mixer's weights, named alike in every family (plus conv1d.bias, in/out_proj.bias if used).
MAMBA2_WEIGHTS = (
    "in_proj.weight",
    "conv1d.weight",
    "dt_bias",
    "A_log",
    "D",
    "norm.weight",
    "out_proj.weight",
)

# Combines the source tensors (converted to fp32) into our tensor; None = the single source as is.
Build = Callable[[list[Tensor]], Tensor]


@dataclass(frozen=True)
class Source:
    """`names[i]` lists the accepted spellings of the i-th checkpoint tensor (the first one found wins).

    `optional`: when none of the spellings of a single-name source exists, the weight is zeros
    (a bias the checkpoint does not have while our layer has one). `fallback`: another way to make the
    same weight, used when this one's tensors are not all there (a fused weight stored split).
    """

    names: tuple[tuple[str, ...], ...]
    build: Build | None = None
    optional: bool = False
    fallback: Source | None = None


def spellings(name: str | Sequence[str], prefixes: Sequence[str] = ("",)) -> tuple[str, ...]:
    """Every `prefix + name` for each accepted name, in order of preference."""
    names = (name,) if isinstance(name, str) else tuple(name)
    return tuple(p + n for n in names for p in prefixes)


def take(*names: str, scale: float | Tensor | None = None, optional: bool = False) -> Source:
    """One tensor, spelt any of `names`; multiplied by `scale` (a number or a broadcastable tensor)."""
    if scale is None or (isinstance(scale, float | int) and scale == 1.0):
        return Source((tuple(names),), None, optional)
    factor = scale
    return Source((tuple(names),), lambda ts: ts[0] * factor, optional)


def concat(parts: Sequence[tuple[str, ...]], dim: int = 0) -> Source:
    """Several tensors concatenated along `dim` (weights that a checkpoint stores split)."""
    return Source(tuple(parts), lambda ts: torch.cat(ts, dim=dim))


def part(name: str, index: int, parts: int, dim: int = 0) -> Source:
    """The `index`-th of `parts` equal slices of one tensor along `dim` (a fused weight that our model
    keeps split, e.g. gate and up projections stacked in one matrix)."""
    return Source(((name,),), lambda ts: ts[0].chunk(parts, dim=dim)[index])


def stacked(parts: Sequence[tuple[str, ...]]) -> Source:
    """Tensors of equal shape stacked along a new leading axis (per-expert weights into our (E, ...))."""
    return Source(tuple(parts), lambda ts: torch.stack(ts))


def swiglu_experts(
    homes: Sequence[str],
    n_experts: int,
    hidden: int,
    names: Sequence[str] = ("gate_proj", "up_proj", "down_proj"),
) -> dict[str, Source]:
    """Our stacked SwiGLU expert weights (keys gate_proj, up_proj, down_proj of model/moe.py's `Experts`)
    from a checkpoint that stores them per expert (`{home}experts.{e}.{name}.weight`, `names` = the gate,
    up and down projections' names) or stacked as transformers 5 holds them (`{home}experts.gate_up_proj`
    (E, 2I, D), gate rows first, and `{home}experts.down_proj` (E, D, I)), under any of `homes`."""

    def per_expert(name: str) -> Source:
        return stacked([tuple(f"{h}experts.{e}.{name}.weight" for h in homes) for e in range(n_experts)])

    def as_stored(name: str, pick: Callable[[Tensor], Tensor]) -> Source:
        return Source((tuple(f"{h}experts.{name}" for h in homes),), lambda ts: pick(ts[0]))

    picks: list[tuple[str, Callable[[Tensor], Tensor]]] = [
        ("gate_up_proj", lambda t: t[:, :hidden]),
        ("gate_up_proj", lambda t: t[:, hidden:]),
        ("down_proj", lambda t: t),
    ]
    ours = ("gate_proj", "up_proj", "down_proj")
    return {
        o: either(per_expert(n), as_stored(stored, pick))
        for o, n, (stored, pick) in zip(ours, names, picks, strict=True)
    }


def either(first: Source, second: Source) -> Source:
    """`first` if the checkpoint has all its tensors, else `second`."""
    return Source(first.names, first.build, first.optional, second)


def constant(make: Callable[[], Tensor]) -> Source:
    """A weight the checkpoint does not store because it is fixed (made on CPU in fp32)."""
    return Source((), lambda ts: make())


class Adapter(Protocol):
    """One module per family in model/checkpoints/ provides these."""

    FAMILY: str

    def hybrid_config(self, hf: dict[str, Any]) -> HybridConfig: ...

    def sources(self, cfg: HybridConfig, hf: dict[str, Any]) -> dict[str, Source]: ...


def get(hf: dict[str, Any], key: str, default: Any) -> Any:
    """`hf[key]`, or `default` when absent or null (configs spell 'use the default' both ways)."""
    value = hf.get(key)
    return default if value is None else value


def number(value: Any) -> float:
    """A float from config.json, where transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    return float(value)


def dt_limit(value: Any) -> tuple[float, float | None]:
    """Mamba-2's clamp of dt after softplus, `(low, high)`; high None when unbounded."""
    lo, hi = (value or (0.0, None))[:2]
    high = None if hi is None else number(hi)
    return number(lo), None if high is None or math.isinf(high) else high


def rope_theta(hf: dict[str, Any]) -> float | None:
    """RoPE base from transformers 5 (`rope_parameters`) or 4 (`rope_theta`) configs; None = no RoPE.

    As transformers reads them: a `rope_theta` written as null means no RoPE (OLMo Hybrid's released
    checkpoints), while an absent one means the default base 10000, even when `rope_parameters` is null.
    """
    params = hf.get("rope_parameters")
    scaling = params if isinstance(params, dict) else hf.get("rope_scaling")
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind != "default":
        raise CheckpointError(
            f"RoPE scaling {kind!r} is not supported (only plain RoPE); this checkpoint would compute "
            "different numbers here than in its reference implementation"
        )
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
    else:
        theta = hf.get("rope_theta", 10000.0)
    return None if theta is None else float(theta)
