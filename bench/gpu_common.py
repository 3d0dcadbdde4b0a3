"""Shared helpers for the GPU benchmarks: what card and versions we ran on, the measured copy
bandwidth (the memory ceiling every decode number is compared with), timing, and JSON output.

Timing follows the device notes: warm up first, CUDA events, median of many repeats
(`triton.testing.do_bench`); tiny decode kernels are timed as CUDA-graph replays so launch gaps
do not hide the kernel.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hybrid_agent.model.decode.engine import DecodeEngine


def device_info() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    versions = {}
    for pkg in ("torch", "triton", "fla-core", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "card": props.name,
        "sm_count": props.multi_processor_count,
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "versions": versions,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def fill_synthetic(eng: DecodeEngine, gen: torch.Generator) -> None:
    """Random K/V in every cache slot and random recurrent states: a long context without prefilling it
    (decode cost does not depend on the values)."""
    with torch.inference_mode():
        for ls in eng.state.layers:
            for name, buf in ls.storage.items():
                if name != "pos":
                    buf.normal_(generator=gen)
            for name, t in ls.recurrent.items():
                t.normal_(generator=gen).mul_(0.1 if name != "conv" else 1.0)


def median_ms(fn: Callable[[], object], *, graph: bool = False, rep_ms: int = 200) -> float:
    """Median time of one call in ms (CUDA events); `graph` replays a captured CUDA graph instead."""
    import triton.testing as tt

    if graph:
        return float(tt.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    return float(tt.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"))


def copy_bandwidth_GBps(nbytes: int = 1 << 30, *, graph: bool = False) -> float:
    """Device-to-device copy of `nbytes`, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), graph=graph)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    widths = [max([len(c)] + [len(_fmt(r.get(c))) for r in rows]) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths, strict=True)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
