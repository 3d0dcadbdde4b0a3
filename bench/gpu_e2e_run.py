"""What the sections of bench/gpu_e2e.py share: the section runner with its time budget and JSON file
(Bench), and one run's settings, models and engine (Run). The sections live in bench/gpu_e2e_checks.py
and bench/gpu_e2e_decode.py; they import this module from the bench/ folder.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class Bench:
    def __init__(self, args: argparse.Namespace, what: str) -> None:
        self.args = args
        self.t0 = time.time()
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.dev = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.res: dict[str, Any] = {"what": what, "tiny": args.tiny}

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def clock(self) -> float:
        self.sync()
        return time.perf_counter()

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.time() - self.t0, 1)
        Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
        import json

        Path(self.args.out).write_text(json.dumps(self.res, indent=2) + "\n")

    def section(self, name: str, fn: Any, min_left: float = 0.0) -> Any:
        if self.left() < min_left:
            self.res[name] = {"skipped": f"time budget ({self.left():.0f} s left)"}
            print(f"[{name}] skipped: {self.left():.0f} s left", flush=True)
            return None
        t = time.time()
        try:
            out = fn()
        except Exception as exc:  # report and go on: later sections still count
            import traceback

            traceback.print_exc()
            out = {"error": repr(exc)[:500]}
        self.res[name] = out
        print(f"[{name}] {time.time() - t:.1f} s: {str(out)[:600]}", flush=True)
        self.save()
        return out

    def free(self) -> None:
        """Give freed tensors' memory back to the card before the next, larger allocation."""
        gc.collect()
        torch.cuda.empty_cache() if self.cuda else None


@dataclass
class Run:
    """One run's settings (from the command line, toy or 7B shapes) and what the sections share. The
    models and the engine are dropped (set to None) when a later section needs their memory."""

    b: Bench
    args: argparse.Namespace
    sections: set[str]
    tiny: bool
    ctxs: list[int]
    prefills: list[int]
    resume_len: int
    n: int  # decode tokens timed per context
    check_tokens: int
    page: int
    gen: torch.Generator
    copy_bps: float = 10e9
    vocab: int = 0
    maxctx: int = 0
    hf: Any = None
    ours: Any = None
    engine: Any = None
    # the decode sections' kernels.gemv roles by --gemv (gemv_microbench fills "measured")
    gemv_roles: dict[str, Any] = field(
        default_factory=lambda: {"default": None, "off": False, "all": True, "measured": None}
    )
    sweep_best: list[Any] = field(default_factory=list)  # attn_sweep's picks for the decode_attn sections

    def rand_ids(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (1, n), device=self.b.dev, generator=self.gen)
