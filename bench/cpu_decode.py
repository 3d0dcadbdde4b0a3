"""CPU decode speed of the shipped default model: the reference kernels against the CPU fast paths.

Greedy decode of `--tokens` tokens (one `model(token, state)` call each, as the agent's engine does)
after a short prefill, on a fresh state every time. Modes: `ref` (`HYBRID_AGENT_KERNELS=ref`, the
`*_ref` kernels), `auto-unfused` (`auto`: the `*_cpu` kernels, with the Mamba-2 mixer's one-token
CPU step `model.mamba2.FUSED_CPU_STEP` off), `auto` (both on: what the agent runs). The modes
alternate inside every repeat, so load from other processes hits all alike; each number is the
median over repeats, and every mode must decode the same tokens. The
model-level changes made for speed (one RoPE cos/sin per attention call, the one-token id check) are
exact refactors in both runs, so the ratio understates the gain over older code. Writes JSON with the
load average before and after, since on a shared 2-core machine the absolute numbers move with it.

    .venv/bin/python bench/cpu_decode.py [--tokens 200] [--prompt-len 32] [--repeats 5] [--threads N]

`--prompt-len 900` is about the context of the agent's first turn (system prompt + tool schemas), where
`bench/eval_default_model.py --speed` measures; attention then costs more per token.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import model.mamba2  # noqa: E402
from model import HybridLM  # noqa: E402

ENV_VAR = "HYBRID_AGENT_KERNELS"


def decode_tok_s(model: HybridLM, prompt: list[int], n: int) -> tuple[float, list[int]]:
    state = model.new_state()
    logits = model(torch.tensor([prompt]), state)[:, -1]  # (1, V)
    toks = []
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(logits.argmax(-1))
        toks.append(tok)
        logits = model(torch.tensor([[tok]]), state)[:, -1]
    return n / (time.perf_counter() - t0), toks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "model" / "default"))
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_decode.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = HybridLM.from_pretrained(args.model, device="cpu")
    prompt = [10 + i % 4000 for i in range(args.prompt_len)]
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {"ref": [], "auto-unfused": [], "auto": []}
    tokens: dict[str, list[int]] = {}

    def set_mode(mode: str) -> None:
        os.environ[ENV_VAR] = mode.split("-")[0]
        model.mamba2.FUSED_CPU_STEP = mode != "auto-unfused"

    for mode in runs:  # warm-up, not timed
        set_mode(mode)
        decode_tok_s(lm, prompt, 20)
    for _ in range(args.repeats):
        for mode in runs:
            set_mode(mode)
            rate, toks = decode_tok_s(lm, prompt, args.tokens)
            runs[mode].append(rate)
            tokens[mode] = toks
    os.environ.pop(ENV_VAR)
    set_mode("auto")
    assert tokens["ref"] == tokens["auto"] == tokens["auto-unfused"], "a fast path decoded other tokens"
    ref, fast = statistics.median(runs["ref"]), statistics.median(runs["auto"])
    unfused = statistics.median(runs["auto-unfused"])
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "tokens": args.tokens,
        "prompt_len": args.prompt_len,
        "repeats": args.repeats,
        "model": args.model,
        "ref_tok_s": [round(x, 1) for x in runs["ref"]],
        "unfused_tok_s": [round(x, 1) for x in runs["auto-unfused"]],
        "fast_tok_s": [round(x, 1) for x in runs["auto"]],
        "ref_median_tok_s": round(ref, 1),
        "unfused_median_tok_s": round(unfused, 1),
        "fast_median_tok_s": round(fast, 1),
        "speedup": round(fast / ref, 3),
        "speedup_vs_unfused": round(fast / unfused, 3),
        # Each repeat runs the modes back to back: the median of the per-repeat ratios is less
        # sensitive to load that changes during the run than the ratio of the medians.
        "paired_speedup": round(
            statistics.median(f / r for f, r in zip(runs["auto"], runs["ref"], strict=True)), 3
        ),
        "paired_speedup_vs_unfused": round(
            statistics.median(f / u for f, u in zip(runs["auto"], runs["auto-unfused"], strict=True)), 3
        ),
        "same_tokens": True,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
