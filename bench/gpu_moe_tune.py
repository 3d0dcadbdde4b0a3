"""The launch-config sweep of kernels.moe_gemv behind bench/gpu_moe.py's `tune` section: which configs
it tries, in what order, within what time, and the line it prints for kernels/moe_tuned.py's table.

moe_gemv is two launches (kernels/triton_moe.py): the gate|up kernel tiles (block_i, block_d_in), the
down kernel (block_d, block_i_in), and both take `num_warps`. They run one after the other, so the op's
time is the sum of theirs and a launch's blocks matter only to that launch; the sweep is therefore two
stages over one GEMV launch grid (`LAUNCHES`) instead of its square:

1. up: each (rows, cols, warps) of LAUNCHES as the gate|up kernel's (block_i, block_d_in, num_warps),
   the down kernel's blocks kept at the default's;
2. down: the fastest config so far (its gate|up blocks and warps kept), each (rows, cols) of LAUNCHES
   with those warps as the down kernel's (block_d, block_i_in).

LAUNCHES: a program streams `rows` weight rows, `cols` columns at a time (rows 1-32, cols 128-2048,
2/4/8 warps), kept where each thread holds 16 to 32 elements of the tile: two to four 16-byte bf16 loads
in flight per weight matrix (fewer leave the HBM short of requests; more cost registers for the fp32
accumulators, two of them in the gate|up kernel). Compiled offline for sm_90 at Qwen3.5-35B-A3B's
shape (local Triton 3.7, as bench/triton_resources.py does), every launch of both kernels builds with
56-155 registers and no spill (16 stack bytes for the down kernel's 4 x 1024, 8 warps). Rows past 32
leave fewer programs than SMs at batch 1 for Qwen3.5-35B-A3B's up launch (8 slots x 512 rows) and are
left out. The current rule (kernels/moe.py `heuristic_gemv_config`) picks 4, 8 or 16 rows of 512, 256 or 128
columns with 4 warps at the two shapes of bench/gpu_moe.py, inside this grid.

Configs whose blocks launch the same kernels at the shape (`launch`, e.g. MoeGemvConfig.clamped) run
once. The first points (the default and the rule) always run; the others only while time is left: the
up stage until `UP_SHARE` of the sweep's time, the down stage until its end. How far each stage got is
recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, replace
from typing import Any

from hybrid_agent.kernels.moe import MoeGemvConfig

ROWS, COLS, WARPS = (1, 2, 4, 8, 16, 32), (128, 256, 512, 1024, 2048), (4, 2, 8)
PER_THREAD = (16, 32)  # elements of a tile per thread, inclusive
LAUNCHES: list[tuple[int, int, int]] = [
    (r, c, w)
    for w in WARPS
    for r in ROWS
    for c in COLS
    if PER_THREAD[0] <= r * c // (32 * w) <= PER_THREAD[1]
]
UP_SHARE = 0.7

Measure = Callable[[MoeGemvConfig], dict[str, Any]]


def up_stage(base: MoeGemvConfig) -> list[MoeGemvConfig]:
    """Stage 1: every launch of LAUNCHES as the gate|up kernel's, the down blocks of `base`."""
    return [replace(base, block_i=r, block_d_in=c, num_warps=w) for r, c, w in LAUNCHES]


def down_stage(base: MoeGemvConfig) -> list[MoeGemvConfig]:
    """Stage 2: every launch of LAUNCHES with `base`'s warps as the down kernel's, `base`'s gate|up."""
    return [replace(base, block_d=r, block_i_in=c) for r, c, w in LAUNCHES if w == base.num_warps]


def fastest(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The quickest point that passed its check, or None."""
    ok = [p for p in points if p.get("ok") and "us" in p]
    return min(ok, key=lambda p: p["us"]) if ok else None


def sweep(
    measure: Measure, first: list[tuple[str, MoeGemvConfig]], launch: Callable[[MoeGemvConfig], Hashable],
    deadline: float, clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:  # fmt: skip
    """Run `measure` (check against the reference, then time: a dict with `ok`, `rel_err` and, when ok,
    `us`) on the `first` points (labelled, always run), then the two stages (module doc) until
    `deadline` (on `clock`). A point that raises is recorded with its error and the sweep goes on."""
    start = clock()
    stop_up = start + UP_SHARE * max(0.0, deadline - start)
    seen: set[Hashable] = set()
    points: list[dict[str, Any]] = []

    def run(cfg: MoeGemvConfig, stage: str) -> None:
        seen.add(launch(cfg))
        row: dict[str, Any] = {"stage": stage, "config": asdict(cfg)}
        try:
            row.update(measure(cfg))
        except Exception as exc:  # a launch the card cannot run (resources): recorded, not fatal
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        points.append(row)

    def stage(name: str, cfgs: list[MoeGemvConfig], until: float) -> dict[str, Any]:
        todo, keys = [], set(seen)
        for cfg in cfgs:
            if launch(cfg) not in keys:
                keys.add(launch(cfg))
                todo.append(cfg)
        done = 0
        for cfg in todo:
            if clock() > until:
                break
            run(cfg, name)
            done += 1
        return {"planned": len(todo), "run": done, "complete": done == len(todo)}

    for label, cfg in first:
        if launch(cfg) not in seen:
            run(cfg, label)
    default = points[0]
    stages = {"up": stage("up", up_stage(MoeGemvConfig(**default["config"])), stop_up)}
    base = fastest(points) or default
    stages["down"] = stage("down", down_stage(MoeGemvConfig(**base["config"])), deadline)
    best = fastest(points)
    return {
        "points": points,
        "default": default,
        "best": best,
        "speedup_vs_default": default["us"] / best["us"] if best and "us" in default else None,
        "stages": stages,
        "complete": all(s["complete"] for s in stages.values()),
        "seconds": clock() - start,
    }


def table_entry(key: tuple[int, int, int, int], result: dict[str, Any], card: str) -> str:
    """The line to paste into kernels/moe_tuned.py's GEMV_TUNED for the sweep's best at `key`."""
    best, default = result["best"], result["default"]
    if best is None:
        return f"# {key}: no config passed its check"
    args = ", ".join(f"{k}={v}" for k, v in best["config"].items())
    was = f"{default['us']:.1f} us for the default" if "us" in default else "the default failed"
    return f"{key}: MoeGemvConfig({args}),  # {card}: {best['us']:.1f} us, {was}"
