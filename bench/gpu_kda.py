"""KDA kernel benchmark (Kimi delta attention, kernels/triton_kda.py and kernels/triton_kda_step.py), run
on the device machine:

    python3 bench/gpu_kda.py --out $OUT/gpu_kda.json

At Kimi-Linear-48B-A3B's shape (32 heads, head_dim 128 for q, k and v), batch 1, bf16:

1. Prefill: our chunked KDA, tokens/s at T = 4k and 16k, with its relative error against the fp32
   torch reference (at 4k) and, when flash-linear-attention is installed, fla's `chunk_kda` on the
   same inputs (time and relative difference). The launch variants (`VARIANTS`, overrides of
   `KdaLaunch`) are timed at 16k each in a child process, so a kernel that faults cannot poison the
   others, with their errors against the fp32 reference at 2k beside the default's.
2. Decode: the one-token step's time against the state's bytes (batch 1, 8, 64; state read + written
   in fp32, inputs read), as CUDA-graph replays, beside a copy of the same bytes, a 1 GiB copy (the
   ceiling) and our gated delta rule step on the same shape (the same bytes but one decay per head).

Sections run in that order until `--budget-s` is spent (the default keeps the whole run under two
minutes on an H100); fla, which autotunes on its first calls, runs last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import copy_bandwidth_GBps, device_info, median_ms, write_json
from hybrid_agent.kernels import triton_kda as tkda
from hybrid_agent.kernels.kda import chunk_kda_ref
from hybrid_agent.kernels.testing import make_gdr_inputs, make_kda_inputs, rel_err

from hybrid_agent import kernels

BF16 = torch.bfloat16
H, D = 32, 128
LENGTHS = (4096, 16384)
VARIANTS: list[dict[str, int]] = [
    {"k_lo": 1, "fu_stages": 1},  # k operands as hi + lo pairs: the final state ~100x closer to fp32
    {"k_lo": 1, "fu_stages": 1, "fu_warps": 8},
    {"fu_bv": 64, "fu_warps": 8},  # half the programs, each twice as wide (sm_90 compile: 64 B spill)
    {"kkt_bkc": 16},  # narrower dk slices in the diagonal blocks' broadcast
]


def kda_case(T: int) -> tuple[torch.Tensor, ...]:
    """Random KDA inputs drawn on the GPU, the ranges of kernels.testing.make_kda_inputs."""
    torch.manual_seed(T)
    dev = "cuda"
    q = torch.nn.functional.normalize(torch.randn(1, T, H, D, device=dev), dim=-1).to(BF16)
    k = torch.nn.functional.normalize(torch.randn(1, T, H, D, device=dev), dim=-1).to(BF16)
    v = torch.randn(1, T, H, D, device=dev, dtype=BF16)
    g = -torch.nn.functional.softplus(torch.randn(1, T, H, D, device=dev)) * 0.5
    beta = torch.sigmoid(torch.randn(1, T, H, device=dev))
    return q, k, v, g, beta


def ours(args: tuple, overrides: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = replace(tkda.KdaLaunch(), **(overrides or {}))
    return tkda.chunk_kda_triton(*args, config=cfg)


def _rates(row: dict[str, Any], T: int) -> dict[str, Any]:
    for key in ("ours", "fla"):
        if f"{key}_ms" in row:
            row[f"{key}_tok_s"] = T / (row[f"{key}_ms"] * 1e-3)
    if "fla_ms" in row:
        row["speedup_vs_fla"] = row["fla_ms"] / row["ours_ms"]
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def prefill(deadline: float) -> list[dict[str, Any]]:
    rows = []
    for T in LENGTHS:
        if time.time() > deadline:
            print(f"time budget spent: skipping prefill T={T}")
            break
        args = kda_case(T)
        o, s = ours(args)
        row: dict[str, Any] = {
            "op": "chunk_kda",
            "shape": f"H{H}_K{D}_V{D}",
            "T": T,
            "config": asdict(tkda.KdaLaunch()),
        }
        row["ours_ms"] = median_ms(lambda a=args: ours(a))
        if T <= 4096:
            q, k, v, g, beta = args
            o_ref, s_ref = chunk_kda_ref(q.float(), k.float(), v.float(), g, beta)
            row["rel_err_vs_ref"] = rel_err(o, o_ref)
            row["state_rel_err_vs_ref"] = rel_err(s, s_ref)
            del o_ref, s_ref
        rows.append(_rates(row, T))
        del args, o, s
        torch.cuda.empty_cache()
    return rows


def variants(deadline: float, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for over in VARIANTS:
        left = deadline - time.time()
        if left < 15:
            print(f"time budget spent: skipping variant {over}")
            break
        cmd = [sys.executable, __file__, "--variant", json.dumps(over)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=min(timeout_s, left))
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"overrides": over, "error": out.stderr[-600:]}
        except subprocess.TimeoutExpired:
            row = {"overrides": over, "error": f"timed out after {min(timeout_s, left):.0f} s"}
        print(row, flush=True)
        rows.append(row)
    return rows


def variant_child(over: dict[str, int]) -> None:
    """One variant: its time at 16k, and its output's and final state's errors against the fp32
    reference at 2k beside the default config's (so a precision variant shows what it buys)."""
    T = LENGTHS[-1]
    big = kda_case(T)
    ours(big, over)
    ms = median_ms(lambda a=big: ours(a, over))
    del big
    q, k, v, g, beta = small = kda_case(2048)
    o_ref, s_ref = chunk_kda_ref(q.float(), k.float(), v.float(), g, beta)
    o, s = ours(small, over)
    o0, s0 = ours(small)
    row = {"overrides": over, "T": T, "ms": ms, "tok_s": T / (ms * 1e-3),
           "rel_err_2k": rel_err(o, o_ref), "state_rel_err_2k": rel_err(s, s_ref),
           "default_rel_err_2k": rel_err(o0, o_ref),
           "default_state_rel_err_2k": rel_err(s0, s_ref)}  # fmt: skip
    print(json.dumps(row))


def decode(ceiling_GBps: float) -> list[dict[str, Any]]:
    return [_decode_row(batch, ceiling_GBps) for batch in (1, 8, 64)]


def _decode_row(batch: int, ceiling_GBps: float) -> dict[str, Any]:
    q, k, v, g, beta, s0 = make_kda_inputs(
        batch, 1, H, D, D, seed=batch, dtype=BF16, with_init=True, device="cuda"
    )
    state = s0.contiguous()
    step = (q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    nbytes = 2 * state.numel() * 4 + (2 * q.numel() + 2 * v.numel()) * 2 + g.numel() * 4 + beta.numel() * 4
    ms = median_ms(lambda: kernels.kda_step(state, *step), graph=True)
    src = torch.randn(nbytes // 8, device="cuda")  # a copy that reads and writes the same bytes
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), graph=True)
    gq, gk, gv, gg, gb, gs = make_gdr_inputs(batch, 1, H, D, D, seed=batch, with_init=True, device="cuda")
    gstate = gs.contiguous()
    gdn = (gq[:, 0].to(BF16), gk[:, 0].to(BF16), gv[:, 0].to(BF16), gg[:, 0], gb[:, 0])
    gdn_ms = median_ms(lambda: kernels.gated_delta_rule_step(gstate, *gdn), graph=True)
    gbps = nbytes / (ms * 1e-3) / 1e9
    row = {
        "op": "kda_step", "shape": f"b{batch}_H{H}_K{D}_V{D}", "state_bytes": state.numel() * 4,
        "bytes": nbytes, "us": ms * 1e3, "GBps": gbps, "same_size_copy_us": copy_ms * 1e3,
        "vs_same_size_copy": copy_ms / ms, "vs_1GiB_copy": gbps / ceiling_GBps,
        "gated_delta_rule_step_us": gdn_ms * 1e3,
    }  # fmt: skip
    print({k2: (round(v2, 4) if isinstance(v2, float) else v2) for k2, v2 in row.items()}, flush=True)
    return row


def fla_rows(deadline: float, prefill_rows: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        from fla.ops.kda import chunk_kda as fla_chunk_kda
    except Exception as exc:  # report, don't die: our own numbers still count
        return {"error": f"fla unavailable: {exc!r}"[:300]}
    out: dict[str, Any] = {"rows": []}
    for row in prefill_rows:
        if time.time() > deadline:
            out["skipped"] = "time budget spent"
            break
        T = row["T"]
        args = kda_case(T)
        try:
            o_fla, _ = fla_chunk_kda(*args, output_final_state=True)
            o, _ = ours(args)
            row["rel_diff_vs_fla"] = rel_err(o, o_fla)
            row["fla_ms"] = median_ms(lambda a=args: fla_chunk_kda(*a, output_final_state=True))
            _rates(row, T)
        except Exception as exc:
            row["fla_error"] = repr(exc)[:300]
        out["rows"].append({k: row.get(k) for k in ("T", "fla_ms", "rel_diff_vs_fla", "fla_error")})
        del args
    return out


def _guarded(name: str, fn, default=None):
    """Run one section; a failure is printed and recorded, and the other sections still run."""
    try:
        return fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"section {name} failed: {exc!r}")
        return default if default is not None else {"error": repr(exc)[:300]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_kda.json")
    ap.add_argument("--budget-s", type=float, default=100.0, help="stop starting new sections after this")
    ap.add_argument("--no-fla", action="store_true", help="skip fla's chunk_kda")
    ap.add_argument(
        "--variant", help="internal: time one variant (a JSON object of KdaLaunch overrides) at 16k"
    )
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_kda.py needs a CUDA device")
    if a.variant:
        variant_child(json.loads(a.variant))
        return
    t0 = time.time()
    deadline = t0 + a.budget_s
    payload: dict[str, Any] = {"device": device_info()}
    payload["copy_1GiB_GBps"] = ceiling = copy_bandwidth_GBps()
    payload["prefill"] = _guarded("prefill", lambda: prefill(deadline), default=[])
    payload["decode"] = _guarded("decode", lambda: decode(ceiling))
    write_json(a.out, payload)  # what we have so far, in case a later section hangs
    payload["variants"] = _guarded("variants", lambda: variants(deadline, 60.0))
    if not a.no_fla and time.time() < deadline:
        payload["fla"] = _guarded("fla", lambda: fla_rows(deadline, payload["prefill"]))
    payload["wall_s"] = time.time() - t0
    write_json(a.out, payload)
    print(f"wrote {a.out} ({payload['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
