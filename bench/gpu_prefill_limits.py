"""The limit of each part of a chunked prefill (bench/gpu_prefill_profile.py): the FLOPs of its matmuls
and attention at the card's dense bf16 peak, and the bytes it must move at least at the HBM peak. A
part's limit is the larger of the two times; its efficiency is that limit over its measured time.

Parts ("kinds") are named as the benchmark's profiler labels are: `<layer kind>.mixer`, `.mlp`, `.norm`
(the block's two norms), `.residual` (the block's adds), then `embed`, `head` (final norm and LM head,
last chunk only) and `other` (the engine's bookkeeping: no FLOPs, no bytes counted).

What is counted, for T tokens in chunks of c (n = ceil(T / c) chunks):
- every nn.Linear inside a mixer or MLP: 2 T in out FLOPs; bytes: its weight once per chunk, plus its
  input and output once (T (in + out) elements);
- attention: causal pairs T (T + 1) / 2 (each chunk attends to the cache before it), 4 H Dh FLOPs a
  pair (QK^T and PV); bytes: q read and o written once, each chunk reads the K/V before it and its own;
- Gated DeltaNet, chunked delta rule with chunk C (kernels' chunk, not the prefill chunk), a token
  and a value head: 6 K V (state read, w S, state update) + C (6 K + 4 V) (the in-chunk products) +
  2 C^2 / 3 (the triangular solve); bytes: q, k, v, o, g, beta once, the fp32 state read and written
  once per prefill chunk;
- Mamba-2 (SSD) a token and head: 4 N P + 2 C (N + P); bytes: x, B, C, dt, y once, the state per chunk;
- norms read and write T D elements, each residual add reads two and writes one.
Other mixers (MLA, KDA, short conv) and MoE experts count their linears only (flagged `partial`).
The dense peaks are the vendors' spec sheet numbers, without sparsity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# (name in torch's device name, dense bf16 TFLOP/s, HBM TB/s); the first match wins
PEAKS: list[tuple[str, float, float]] = [
    ("GH200", 989.0, 4.0),
    ("H200", 989.0, 4.8),
    ("H100 PCIe", 756.0, 2.0),
    ("H100 NVL", 835.0, 3.9),
    ("H100", 989.0, 3.35),  # SXM (torch: "NVIDIA H100 80GB HBM3")
    ("A100", 312.0, 2.0),
]


def peaks(card: str) -> dict[str, Any]:
    """The peak table's row for `card` (torch's device name); an unknown card gets H100 SXM's numbers,
    marked `assumed`."""
    for key, tflops, tbps in PEAKS:
        if key.lower() in card.lower():
            return {"card": card, "match": key, "bf16_TFLOPs": tflops, "HBM_TBps": tbps, "assumed": False}
    return {"card": card, "match": "H100", "bf16_TFLOPs": 989.0, "HBM_TBps": 3.35, "assumed": True}


def chunks(T: int, c: int) -> list[tuple[int, int]]:
    """(start, length) of each prefill chunk."""
    return [(s, min(c, T - s)) for s in range(0, T, c)]


def linear_cost(module: nn.Module, T: int, n_chunks: int, item: int) -> tuple[float, float]:
    """FLOPs and bytes of every nn.Linear under `module` over T tokens."""
    flops = nbytes = 0.0
    for lin in (m for m in module.modules() if isinstance(m, nn.Linear)):
        flops += 2.0 * T * lin.in_features * lin.out_features
        nbytes += lin.weight.nbytes * n_chunks + T * (lin.in_features + lin.out_features) * item
    return flops, nbytes


def core_cost(mixer: nn.Module, T: int, c: int, item: int) -> tuple[float, float, bool]:
    """FLOPs and bytes of a mixer's core (beyond its linears), and whether the mixer's kind is modelled."""
    from hybrid_agent.model.attention import Attention
    from hybrid_agent.model.gated_deltanet import GatedDeltaNet
    from hybrid_agent.model.mamba2 import Mamba2Mixer

    spans = chunks(T, c)
    if isinstance(mixer, Attention):
        H, Hkv, Dh = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
        flops = 4.0 * H * Dh * T * (T + 1) / 2
        kv = sum((s + n) * 2 * Hkv * Dh for s, n in spans) + T * 2 * Hkv * Dh  # reads, then the writes
        return flops, (2 * T * H * Dh + kv) * item, True
    if isinstance(mixer, GatedDeltaNet):
        H, K, V, C = mixer.n_v_heads, mixer.head_k_dim, mixer.head_v_dim, mixer.chunk_size
        flops = T * H * (6.0 * K * V + C * (6.0 * K + 4.0 * V) + 2.0 * C * C / 3)
        return flops, T * H * (2 * K + 2 * V + 2) * item + len(spans) * 2 * H * K * V * 4, True
    if isinstance(mixer, Mamba2Mixer):
        H, P, N, G, C = mixer.n_heads, mixer.head_dim, mixer.d_state, mixer.n_groups, mixer.chunk_size
        flops = T * H * (4.0 * N * P + 2.0 * C * (N + P))
        return flops, T * (2 * H * P + 2 * G * N + H) * item + len(spans) * 2 * H * P * N * 4, True
    return 0.0, 0.0, False


def kind_costs(model: Any, T: int, c: int) -> dict[str, dict[str, Any]]:
    """FLOPs and bytes of each kind over one prefill of T tokens in chunks of c."""
    from hybrid_agent.model.moe import MoE

    item = model.dtype.itemsize
    n = len(chunks(T, c))
    D = model.config.d_model
    out: dict[str, dict[str, Any]] = {}

    def add(kind: str, flops: float, nbytes: float, partial: bool = False) -> None:
        row = out.setdefault(kind, {"flops": 0.0, "bytes": 0.0, "partial": False})
        row["flops"] += flops
        row["bytes"] += nbytes
        row["partial"] = row["partial"] or partial

    for block in model.layers:
        k = block.kind
        if block.mixer is not None:
            lf, lb = linear_cost(block.mixer, T, n, item)
            cf, cb, known = core_cost(block.mixer, T, c, item)
            lins = {id(p) for m in block.mixer.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
            others = sum(p.nbytes for p in block.mixer.parameters() if id(p) not in lins)  # conv, norms
            add(f"{k}.mixer", lf + cf, lb + cb + others * n, partial=not known)
        if block.mlp is not None:
            add(f"{k}.mlp", *linear_cost(block.mlp, T, n, item), partial=isinstance(block.mlp, MoE))
        norms = [m for m in (block.mixer_norm, block.mlp_norm) if m is not None]
        add(f"{k}.norm", 0.0, len(norms) * 2 * T * D * item)
        add(f"{k}.residual", 0.0, len(norms) * 3 * T * D * item)
    last = chunks(T, c)[-1][1]
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    add("embed", 0.0, 2 * T * D * item)
    add("head", 2.0 * last * head.shape[0] * D, head.nbytes + last * (3 * D + head.shape[0]) * item)
    add("other", 0.0, 0.0)
    return out


def limits(costs: dict[str, dict[str, Any]], peak: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each kind's limit in ms and what sets it (compute or memory)."""
    out = {}
    for kind, row in costs.items():
        t_flop = row["flops"] / (peak["bf16_TFLOPs"] * 1e12) * 1e3
        t_byte = row["bytes"] / (peak["HBM_TBps"] * 1e12) * 1e3
        out[kind] = {
            **row,
            "flop_ms": t_flop,
            "byte_ms": t_byte,
            "limit_ms": max(t_flop, t_byte),
            "bound": "compute" if t_flop >= t_byte else "memory",
        }
    return out


def versus(by_kind: dict[str, dict[str, Any]], lim: dict[str, dict[str, Any]]) -> None:
    """Adds each measured kind's limit and efficiency (limit / measured) in place."""
    for kind, row in by_kind.items():
        got = lim.get(kind)
        if got is None:
            continue
        row.update(
            {f: got[f] for f in ("flops", "bytes", "flop_ms", "byte_ms", "limit_ms", "bound", "partial")}
        )
        row["efficiency"] = got["limit_ms"] / row["ms"] if row["ms"] > 0 else None


def totals(lim: dict[str, dict[str, Any]], T: int, peak: dict[str, Any]) -> dict[str, Any]:
    """The whole prefill against the model's FLOP limit (all its FLOPs at the dense peak) and against
    the sum of the kinds' limits (each at the larger of its FLOP and byte time)."""
    flops = sum(r["flops"] for r in lim.values())
    flop_ms = flops / (peak["bf16_TFLOPs"] * 1e12) * 1e3
    roof_ms = sum(r["limit_ms"] for r in lim.values())
    gemm = peak.get("measured_gemm_TFLOPs")  # the card's own square-GEMM rate, where measured
    at_gemm = flops / (gemm * 1e12) if gemm else None
    return {
        "measured_gemm_limit_tok_s": T / at_gemm if at_gemm else None,
        "flops": flops,
        "flops_per_token": flops / T,
        "flop_limit_ms": flop_ms,
        "flop_limit_tok_s": T / (flop_ms * 1e-3) if flop_ms > 0 else math.inf,
        "roofline_ms": roof_ms,
        "roofline_tok_s": T / (roof_ms * 1e-3) if roof_ms > 0 else math.inf,
    }


def measured_gemm_tflops(n: int = 8192) -> float:
    """A square bf16 matmul on this card (median of repeats): the practical matmul ceiling."""
    import triton.testing as tt

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = tt.do_bench(lambda: a @ b, return_mode="median")
    return 2.0 * n**3 / (ms * 1e-3) / 1e12
