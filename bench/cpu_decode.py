"""CPU decode speed of the shipped default model: the reference kernels against the CPU fast path.

Greedy decode of `--tokens` tokens (one `model(token, state)` call each, as the agent's engine does)
after a short prefill, on a fresh state every time. Baseline: `HYBRID_AGENT_KERNELS=ref` (the `*_ref`
kernels); fast: `auto` (the `*_cpu` implementations on CPU tensors). The two alternate inside every
repeat, so load from other processes hits both alike; each number is the median over repeats. The
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
    model = HybridLM.from_pretrained(args.model, device="cpu")
    prompt = [10 + i % 4000 for i in range(args.prompt_len)]
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {"ref": [], "auto": []}
    tokens: dict[str, list[int]] = {}
    for mode in runs:  # warm-up, not timed
        os.environ[ENV_VAR] = mode
        decode_tok_s(model, prompt, 20)
    for _ in range(args.repeats):
        for mode in runs:
            os.environ[ENV_VAR] = mode
            rate, toks = decode_tok_s(model, prompt, args.tokens)
            runs[mode].append(rate)
            tokens[mode] = toks
    os.environ.pop(ENV_VAR)
    assert tokens["ref"] == tokens["auto"], "the fast path decoded other tokens than the reference"
    ref, fast = statistics.median(runs["ref"]), statistics.median(runs["auto"])
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
        "ref_tok_s": [round(x, 1) for x in runs["ref"]],
        "fast_tok_s": [round(x, 1) for x in runs["auto"]],
        "ref_median_tok_s": round(ref, 1),
        "fast_median_tok_s": round(fast, 1),
        "speedup": round(fast / ref, 3),
        "same_tokens": True,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
