"""Where a batched decode step's time goes (issue 24): the per-row engine that `hybrid-agent serve` steps
(model/decode/engine.py with per_row=True, model/decode/rows.py) at OLMo Hybrid 7B's shape, bf16, random
weights, at several row counts:

    python3 bench/gpu_step_profile.py --out $OUT/gpu_step_profile.json          # device machine
    .venv/bin/python bench/gpu_step_profile.py --tiny --out /tmp/sp.json        # CPU smoke run

For each row count B (`--rows`), every slot holding a `--context`-token prompt (prefill_row):
1. `step_<B>`: the step's median time (the captured graph on a GPU; `--steps` steps after 3 warm ones),
   tokens/s (B / step), and the step's time over the 1-row step's;
2. `profile_<B>`: the same step run without the graph (`use_graphs=False`: the same kernels, launched
   one by one) under torch.profiler for `--profile-steps` steps: device time a step by kernel name
   (top 25), the number of kernels a step, and their summed time against the graphed step's (the
   difference is launch gaps the graph removes).
The model is built as bench/gpu_prefill_profile.py builds it (bench/gpu_olmo.py). The JSON file is
rewritten after each section, so a run cut by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_e2e_run import Bench
from gpu_olmo import adopt_weights, build_hf, hf_config


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_step_profile.json")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke run)")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is there")
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip sections that would start later")
    ap.add_argument("--rows", default="1,8,32,64", help="comma list of row counts")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens in every slot")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    ap.add_argument("--profile-steps", type=int, default=3, help="profiled steps")
    return ap


def engine_for(model: Any, rows: int, ctx: int, steps: int, graphs: bool | None) -> Any:
    """A per-row engine with every slot holding the same random `ctx`-token prompt."""
    from hybrid_agent.model.decode.engine import DecodeEngine

    eng = DecodeEngine(model, max_context=ctx + steps + 32, batch_size=rows, per_row=True, use_graphs=graphs)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (ctx,), generator=gen)
    for b in range(rows):
        eng.prefill_row(b, prompt)
    return eng


def time_steps(b: Bench, eng: Any, rows: int, steps: int) -> list[float]:
    tok = torch.zeros(rows, dtype=torch.long, device=b.dev)
    out = []
    for i in range(3 + steps):
        t = b.clock()
        tok.copy_(eng.step(tok).argmax(-1))
        if i >= 3:
            out.append(b.clock() - t)
    return out


def step_row(
    b: Bench, model: Any, rows: int, args: argparse.Namespace, base_ms: float | None
) -> dict[str, Any]:
    eng = engine_for(model, rows, args.context, 3 + args.steps, None)
    times = time_steps(b, eng, rows, args.steps)
    ms = statistics.median(times) * 1e3
    del eng
    return {"rows": rows, "graphed": b.cuda, "step_ms": ms, "tok_s": rows * 1e3 / ms,
            "vs_1_row": ms / base_ms if base_ms else 1.0, "steps": len(times)}  # fmt: skip


def profile_row(
    b: Bench, model: Any, rows: int, args: argparse.Namespace, graphed_ms: float
) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    eng = engine_for(model, rows, args.context, 3 + args.profile_steps + 3, False)
    time_steps(b, eng, rows, 0)  # warm (compiles the kernels at this batch)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.cuda else [])
    tok = torch.zeros(rows, dtype=torch.long, device=b.dev)
    with profile(activities=acts) as prof:
        for _ in range(args.profile_steps):
            tok.copy_(eng.step(tok).argmax(-1))
        b.sync()
    n = args.profile_steps
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        dev = e.device_type == torch.autograd.DeviceType.CUDA
        if dev != b.cuda or (not b.cuda and e.cpu_parent is not None):
            continue  # device kernels on a GPU; top-level ops on the CPU
        t_us = e.device_time if b.cuda else e.cpu_time_total
        by_name.setdefault(e.name, []).append(t_us)
    kernels = sorted(((k, sum(v) / n / 1e3, len(v) / n) for k, v in by_name.items()), key=lambda r: -r[1])
    total = sum(r[1] for r in kernels)
    del eng
    return {
        "rows": rows, "kernels_per_step": sum(r[2] for r in kernels), "kernel_ms_per_step": total,
        "graphed_step_ms": graphed_ms,
        "top": [{"name": k[:120], "ms": ms, "per_step": c} for k, ms, c in kernels[:25]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # Tests call main in-process: autograd is off only for the run, then as it was.
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    try:
        rows = [int(v) for v in args.rows.split(",") if v]
    except ValueError:
        parser().error(f"--rows takes a comma list of row counts like 1,8,32; got {args.rows!r}")
    if not rows or min(rows) < 1 or args.context < 1 or args.steps < 1 or args.profile_steps < 1:
        parser().error("--rows, --context, --steps and --profile-steps must be positive")
    b = Bench(args, what=__doc__.splitlines()[0])
    if b.cuda:
        from gpu_common import device_info

        b.res["info"] = device_info()
    model = adopt_weights(build_hf(hf_config(args.tiny), b.dev, b.dtype))
    b.res["model"] = {"params": model.num_parameters(), "layer_types": model.config.layer_types}
    b.res["context"] = args.context
    b.save()
    base = None
    for r in rows:
        out = b.section(f"step_{r}", lambda r=r, base=base: step_row(b, model, r, args, base), min_left=5)
        if out and "step_ms" in out:
            base = base or out["step_ms"]
            b.section(
                f"profile_{r}", lambda r=r, ms=out["step_ms"]: profile_row(b, model, r, args, ms), min_left=5
            )
    for r in rows:
        s, p = b.res.get(f"step_{r}", {}), b.res.get(f"profile_{r}", {})
        if "step_ms" in s:
            k_ms, k_n = p.get("kernel_ms_per_step", float("nan")), p.get("kernels_per_step", 0)
            print(
                f"rows {r:3d}: step {s['step_ms']:.2f} ms ({s['tok_s']:.1f} tok/s, "
                f"{s['vs_1_row']:.2f}x the 1-row step); ungraphed: {k_n:.0f} ops, {k_ms:.2f} ms"
            )
            for k in p.get("top", [])[:8]:
                print(f"           {k['ms']:7.3f} ms  x{k['per_step']:.0f}  {k['name'][:90]}")
    b.save()
    return b.res


if __name__ == "__main__":
    main()
