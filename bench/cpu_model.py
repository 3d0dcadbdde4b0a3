"""CPU benchmark: a ~20M-parameter hybrid against a same-size attention-only model, in one run.

Measures, for the presets `20m` (2 Mamba-2 : 2 Gated DeltaNet : 2 attention) and `20m-attn`
(7 attention layers), random weights, batch 1, fp32, the torch reference kernels:
- prefill tokens/s of one call over T tokens;
- decode tokens/s (one token per call, greedy) after a prefill of T tokens;
- state bytes after T tokens (measured), also for the hybrid with an attention window.
The two models alternate inside every repeat, so load from other processes hits both alike; each
number is the median over repeats. Prints a table and writes JSON (device, versions, date).

    .venv/bin/python bench/cpu_model.py [--contexts 512 2048] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hybrid_agent.model import HybridConfig, HybridLM, ModelState
from hybrid_agent.model.state import TOKEN_AXIS

MODELS = ("20m", "20m-attn")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Clock:
    """Wall time and this process's CPU time. On a shared machine the CPU time (tokens per second of
    CPU actually given to us) is the steadier measure; both are reported."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_prefill(model: HybridLM, ids: torch.Tensor) -> tuple[float, float]:
    state = model.new_state()
    with Clock() as c:
        model(ids, state)
    return ids.shape[1] / c.wall, ids.shape[1] / c.cpu


def time_decode(model: HybridLM, state: ModelState, first: torch.Tensor, n: int) -> tuple[float, float]:
    logits, state = first, state.clone()
    with Clock() as c:
        for _ in range(n):
            token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            logits = model(token, state)
    return n / c.wall, n / c.cpu


def state_bytes_at(model: HybridLM, n_tokens: int, window: int | None = None, sinks: int = 0) -> int:
    """State bytes after `n_tokens`, from the layout: the fixed part plus the held tokens' cache and
    positions (checked against measured states below)."""
    state = model.new_state(window=window, sinks=sinks)
    per_token = 0
    for _, spec in state.layout:
        for shape in spec.cache.values():
            per_token += math.prod(d for d in shape if d != TOKEN_AXIS) * model.dtype.itemsize
        per_token += 8 if spec.cache else 0  # the int64 position
    held = n_tokens if state.window is None else min(n_tokens, state.sinks + state.window)
    return state.nbytes + held * per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--window", type=int, default=512, help="attention window for the windowed state row")
    ap.add_argument("--state-tokens", type=int, nargs="+", default=[0, 2048, 8192, 32768, 131072])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_model.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: HybridLM(HybridConfig.from_name(name)).eval() for name in MODELS}
    vocab = models[MODELS[0]].config.vocab_size
    load_before = os.getloadavg()
    rows: list[dict[str, object]] = []
    for ctx in args.contexts:
        ids = torch.randint(0, vocab, (1, ctx), generator=torch.Generator().manual_seed(ctx))
        prefill: dict[str, list[tuple[float, float]]] = {n: [] for n in MODELS}
        decode: dict[str, list[tuple[float, float]]] = {n: [] for n in MODELS}
        states: dict[str, tuple[ModelState, torch.Tensor]] = {}
        for name, model in models.items():  # warm-up, and the state to decode from
            state = model.new_state()
            states[name] = (state, model(ids, state))
        for _ in range(args.repeats):
            for name, model in models.items():
                prefill[name].append(time_prefill(model, ids))
                decode[name].append(time_decode(model, *states[name], args.decode_tokens))
        for name in MODELS:
            rows.append(
                {
                    "model": name,
                    "params": models[name].num_parameters(),
                    "context": ctx,
                    "prefill_tok_s": statistics.median(w for w, _ in prefill[name]),
                    "decode_tok_s": statistics.median(w for w, _ in decode[name]),
                    "prefill_tok_per_cpu_s": statistics.median(c for _, c in prefill[name]),
                    "decode_tok_per_cpu_s": statistics.median(c for _, c in decode[name]),
                    "state_bytes": states[name][0].nbytes,
                }
            )
    # State size with an attention window: constant once the context passes the window.
    hybrid = models["20m"]
    windowed: list[dict[str, int]] = []
    for ctx in args.contexts:
        state = hybrid.new_state(window=args.window, sinks=4)
        hybrid(torch.randint(0, vocab, (1, ctx)), state)
        windowed.append({"context": ctx, "state_bytes": state.nbytes})
        if state.nbytes != state_bytes_at(hybrid, ctx, args.window, 4):
            raise AssertionError("state_bytes_at disagrees with a measured windowed state")
    for r in rows:
        if r["state_bytes"] != state_bytes_at(models[str(r["model"])], int(r["context"])):  # type: ignore[call-overload]
            raise AssertionError(f"state_bytes_at disagrees with the measured state of {r['model']}")
    sweep = {
        "20m": [state_bytes_at(hybrid, n) for n in args.state_tokens],
        "20m-attn": [state_bytes_at(models["20m-attn"], n) for n in args.state_tokens],
        f"20m window {args.window}+4": [state_bytes_at(hybrid, n, args.window, 4) for n in args.state_tokens],
    }

    by = {(r["model"], r["context"]): r for r in rows}
    threads, load = args.threads, load_before[0]
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {threads} thread(s), load avg {load:.1f}")
    print("tok/s: per second of wall time / per second of CPU time given to this process")
    cols = ("context", "model", "params", "prefill tok/s", "decode tok/s", "state MB")
    widths = (8, 9, 6, 13, 13, 8)
    header = " | ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    print(header + "\n" + "-" * len(header))
    for r in rows:
        cells = (
            r["context"],
            r["model"],
            f"{float(r['params']) / 1e6:.1f}M",  # type: ignore[arg-type]
            f"{r['prefill_tok_s']:.0f} / {r['prefill_tok_per_cpu_s']:.0f}",
            f"{r['decode_tok_s']:.1f} / {r['decode_tok_per_cpu_s']:.1f}",
            f"{float(r['state_bytes']) / 1e6:.2f}",  # type: ignore[arg-type]
        )
        print(" | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    ratios = []
    for ctx in args.contexts:
        h, a = by[("20m", ctx)], by[("20m-attn", ctx)]
        ratio: dict[str, float] = {"context": ctx}
        fields = {
            "prefill": "prefill_tok_s",
            "decode": "decode_tok_s",
            "prefill_cpu": "prefill_tok_per_cpu_s",
            "decode_cpu": "decode_tok_per_cpu_s",
            "state_bytes": "state_bytes",
        }
        for key, field in fields.items():
            ratio[key] = float(h[field]) / float(a[field])  # type: ignore[arg-type]
        ratios.append(ratio)
        print(
            f"hybrid / attention-only at {ctx}: prefill x{ratio['prefill']:.2f} "
            f"(CPU time x{ratio['prefill_cpu']:.2f}), decode x{ratio['decode']:.2f} "
            f"(CPU time x{ratio['decode_cpu']:.2f}), state bytes x{ratio['state_bytes']:.2f}"
        )
    for w in windowed:
        mb = w["state_bytes"] / 1e6
        print(f"hybrid with window {args.window} + 4 sinks at {w['context']}: state {mb:.2f} MB")

    print("state MB vs tokens (from the layout; equal to the measured states above)")
    print(f"{'tokens':>26} | " + " | ".join(f"{n:>8}" for n in args.state_tokens))
    for name, sizes in sweep.items():
        print(f"{name:>26} | " + " | ".join(f"{b / 1e6:>8.2f}" for b in sizes))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "cpu_model",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
        "load_average_at_start": load_before,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {
            "dtype": "float32",
            "batch": 1,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
        },
        "rows": rows,
        "ratios_hybrid_over_attention": ratios,
        "windowed_hybrid": {"window": args.window, "sinks": 4, "rows": windowed},
        "state_bytes_vs_tokens": {"tokens": args.state_tokens, "bytes": sweep},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
