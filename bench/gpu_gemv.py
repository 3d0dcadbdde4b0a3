"""kernels.gemv (Triton) vs F.linear (cuBLAS) at the one-token matmul shapes of OLMo Hybrid 7B's decode
step, batch 1, bf16 (issue 8 item 2: decode at >= 80% of the bandwidth floor):

    python3 bench/gpu_gemv.py --out $OUT/gpu_gemv.json      # on the device (bench/gpu_e2e.py also runs it)

For each shape: a check of every candidate config against cuBLAS (relative error, asserted), then the
time of one call as the median of CUDA-graph replays (bench/gpu_common.median_ms(graph=True)). Each
timed graph cycles through enough copies of W (>= 256 MB) that no copy stays in the 50 MB L2 between
its uses (the real step reads each weight once). GB/s = weight bytes / time. The best config per shape
goes into the engine's `gemv_cfg` (bench/gpu_e2e.py), and a role counts as faster where that best beats
cuBLAS.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybrid_agent.kernels import gemv
from hybrid_agent.kernels.gemv import GemvConfig

# role -> (N, K) of W at OLMo Hybrid 7B's shape (d 3840, MLP 11008, GDN 30 heads of k 96 / v 192 with
# q|k|v|a|b|g fused and padded to 16 rows, attention 30 heads of 128, vocab 100352); how many a step
OLMO_SHAPES: dict[str, tuple[int, int]] = {
    "gate_up": (22016, 3840),
    "down": (3840, 11008),
    "gdn_in": (17344, 3840),
    "gdn_out": (3840, 5760),
    "attn_in": (11520, 3840),
    "attn_out": (3840, 3840),
    "head": (100352, 3840),
}
CALLS_PER_STEP = {
    "gate_up": 32,
    "down": 32,
    "gdn_in": 24,
    "gdn_out": 24,
    "attn_in": 8,
    "attn_out": 8,
    "head": 1,
}

G = GemvConfig
WIDE = [G(16, 256, 1, 4, 2), G(16, 256, 1, 4, 4), G(8, 512, 1, 4, 2), G(32, 256, 1, 4, 2)]
NARROW = [G(16, 256, 1, 4, 2), G(8, 512, 1, 4, 2), G(8, 256, 1, 4, 2),
          G(16, 256, 2, 4, 2), G(16, 256, 4, 4, 2), G(8, 512, 2, 4, 2)]  # fmt: skip


def moe_stacked(engine: Any, mlp: Any) -> tuple[int, int] | None:
    """The (N, K) of an MoE layer's stacked input matmul when the engine's fused MoE step runs it
    (model/decode/moe_step.py), else None."""
    from hybrid_agent.model.decode.moe_step import input_linears
    from hybrid_agent.model.moe import MoE

    if not (isinstance(mlp, MoE) and engine.fused and engine.moe_fused):
        return None
    w = engine.stacked_weight(input_linears(mlp))
    return None if w is None else tuple(w.shape)


def engine_shapes(engine: Any) -> dict[str, tuple[int, int]]:
    """The (N, K) of each role in a fused DecodeEngine (first layer of each kind)."""
    m, out = engine.model, {}
    for block in m.layers:
        a = block.mixer
        if block.kind == "gated_deltanet":
            out.setdefault("gdn_in", tuple(engine.stacked_weight(a.in_projs).shape))
            out.setdefault("gdn_out", tuple(a.o_proj.weight.shape))
        elif block.kind == "attention":
            out.setdefault("attn_in", tuple(engine.stacked_weight(a.in_projs).shape))
            out.setdefault("attn_out", tuple(a.o_proj.weight.shape))
        moe_in = moe_stacked(engine, block.mlp)
        if moe_in is not None:  # the fused MoE step: one stacked matmul, the shared down in moe_gemv
            out.setdefault("gate_up", moe_in)
            continue
        mlp = getattr(block.mlp, "shared_expert", block.mlp)  # an MoE's shared expert is an MLP
        if mlp is not None and getattr(mlp, "gate_proj", None) is not None:
            out.setdefault("gate_up", tuple(engine.stacked_weight([mlp.gate_proj, mlp.up_proj]).shape))
            out.setdefault("down", tuple(mlp.down_proj.weight.shape))
    head = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
    out["head"] = tuple(head.shape)
    return out


def _time_us(fn_one: Any, ws: list[torch.Tensor]) -> float:
    from gpu_common import median_ms

    def run() -> None:
        for w in ws:
            fn_one(w)

    return median_ms(run, graph=True, rep_ms=30) * 1e3 / len(ws)


def bench_shape(role: str, n: int, k: int, sms: int) -> dict[str, Any]:
    gen = torch.Generator("cuda").manual_seed(n * 7 + k)
    nbytes = n * k * 2
    copies = max(1, min(8, math.ceil(256e6 / nbytes)))
    ws = [
        torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) / k**0.5 for _ in range(copies)
    ]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    exact = F.linear(x.float(), ws[0].float())
    want = F.linear(x, ws[0])
    cu_err = float((want.float() - exact).norm() / exact.norm())
    row: dict[str, Any] = {"role": role, "N": n, "K": k, "weight_MB": nbytes / 1e6, "copies": copies,
                           "cublas_rel_err": cu_err}  # fmt: skip
    cu_us = _time_us(lambda w: F.linear(x, w), ws)
    row["cublas_us"], row["cublas_GBps"] = cu_us, nbytes / (cu_us * 1e-6) / 1e9
    cands = WIDE if -(-n // 16) >= 4 * sms else NARROW
    row["configs"] = []
    for cfg in cands:
        got = gemv(x, ws[0], config=cfg)
        err = float((got.float() - exact).norm() / exact.norm())
        # every config is checked before it is timed: within bf16 output rounding of the fp32 product
        assert math.isfinite(err) and err < 1e-2, f"{role} {cfg}: rel err {err}"
        us = _time_us(lambda w, c=cfg: gemv(x, w, config=c), ws)
        row["configs"].append(
            {"config": cfg.__dict__, "us": us, "GBps": nbytes / (us * 1e-6) / 1e9, "rel_err": err}
        )
    best = min(row["configs"], key=lambda r: r["us"])
    row["best"] = best
    row["speedup_vs_cublas"] = cu_us / best["us"]
    row["faster"] = best["us"] < cu_us
    return row


def sweep(
    shapes: dict[str, tuple[int, int]] | None = None, *, install: dict[Any, GemvConfig] | None = None
) -> dict[str, Any]:
    """Benchmarks every role; the best config of each (N, K) goes into `install` (an engine's gemv_cfg)."""
    from gpu_common import copy_bandwidth_GBps, device_info

    shapes = shapes or OLMO_SHAPES
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for role, (n, k) in shapes.items():
        row = bench_shape(role, n, k, sms)
        rows.append(row)
        best = row["best"]
        print(f"gemv {role:8s} N={n:6d} K={k:5d}: cuBLAS {row['cublas_us']:7.1f} us"
              f" {row['cublas_GBps']:5.0f} GB/s"
              f" | gemv {best['us']:7.1f} us {best['GBps']:5.0f} GB/s {best['config']}"
              f" | x{row['speedup_vs_cublas']:.3f}", flush=True)  # fmt: skip
        if install is not None:
            install[(n, k)] = GemvConfig(**row["best"]["config"])
    per_step = {
        "cublas_us": sum(CALLS_PER_STEP.get(r["role"], 1) * r["cublas_us"] for r in rows),
        "best_us": sum(CALLS_PER_STEP.get(r["role"], 1) * min(r["best"]["us"], r["cublas_us"]) for r in rows),
        "calls_per_step": CALLS_PER_STEP,
    }
    return {
        "what": __doc__.splitlines()[0],
        "info": {**device_info(), "copy_1GiB_GBps": copy_bandwidth_GBps()},
        "shapes": rows,
        "faster_roles": sorted(r["role"] for r in rows if r["faster"]),
        "olmo_step_matmuls": per_step,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_gemv.json")
    args = ap.parse_args()
    from gpu_common import write_json

    torch.set_grad_enabled(False)
    res = sweep()
    write_json(args.out, res)
    print(res["faster_roles"], res["olmo_step_matmuls"])


if __name__ == "__main__":
    main()
