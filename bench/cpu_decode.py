"""CPU decode speed of the shipped default model: the reference kernels and the one-token CPU path
that the agent runs.

Greedy decode of `--tokens` tokens (one `model(token, state)` call each, as the agent's engine does)
after a prefill of `--prompt-len` tokens, on a fresh state every repeat. Modes: `ref`
(`HYBRID_AGENT_KERNELS=ref`, the `*_ref` kernels through each module's generic path), `auto` (what the
agent runs: the kernels' `*_cpu` forms and the one-token path, see model/layers.py). Results before
the one-token path moved into the kernels also have a `generic` mode (the `*_cpu` kernels through the
generic path). Both modes multiply one row by the packed weights of model/cpu_rows.py (a model path,
not a kernel choice), so `speedup_vs_ref` leaves its gain out: runs of the code before and after it,
alternating, measure that (bench/results/cpu_decode_fast_s11.json). The modes run token by token in
turn, each on its own state, so load from other processes hits all of them alike even when it changes
within a repeat.
Per mode and repeat: tok/s = tokens / the summed time of its steps (the argmax and the model call);
the JSON gives the median over repeats, the median of the per-repeat ratios, and the median step
time over all steps. Every mode must decode the same tokens. The load average is written before and
after: on a shared 2-core machine the absolute numbers move with it.

    .venv/bin/python bench/cpu_decode.py [--tokens 150] [--prompt-len 900] [--repeats 15] [--threads N]
        [--wait-policies [--burn 0,1] [--policy-repeats 3]]

`--prompt-len 900` is about the context of the agent's first turn (system prompt + tool schemas), where
`bench/eval_default_model.py --speed` measures; attention costs more per token at longer contexts.

Load matters more than the path: with torch's two threads and OpenMP's default spin-waiting, one
other busy process on this 2-core machine takes decode to a few tok/s (every parallel matmul waits
for a descheduled thread); with `OMP_WAIT_POLICY=PASSIVE` in the environment it keeps most of its
speed, at a cost on a quiet machine (`--wait-policies --burn 0,1`: the agent's path in child
processes under both policies, with 0 and 1 busy loops of ours; `wait_policies` in the JSON, e.g.
bench/results/cpu_decode_s3.json). The policy does not change the numbers, only the waiting.
The JSON records these variables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hybrid_agent.model import HybridLM

ROOT = Path(__file__).resolve().parents[1]

ENV_VAR = "HYBRID_AGENT_KERNELS"
MODES = ("ref", "auto")


def set_mode(mode: str) -> None:
    os.environ[ENV_VAR] = "ref" if mode == "ref" else "auto"


def decode_interleaved(
    lm: HybridLM, prompt: list[int], n: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Prefill `prompt` once per mode, then `n` greedy steps, the modes in turn at every step; the
    seconds of each step and the tokens, per mode."""
    states, logits = {}, {}
    for mode in MODES:
        set_mode(mode)
        states[mode] = lm.new_state()
        logits[mode] = lm(torch.tensor([prompt]), states[mode])[:, -1]  # (1, V)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    tokens: dict[str, list[int]] = {m: [] for m in MODES}
    for _ in range(n):
        for mode in MODES:
            set_mode(mode)
            t0 = time.perf_counter()
            tok = int(logits[mode].argmax(-1))
            logits[mode] = lm(torch.tensor([[tok]]), states[mode])[:, -1]
            times[mode].append(time.perf_counter() - t0)
            tokens[mode].append(tok)
    return times, tokens


def child_decode(lm: HybridLM, prompt: list[int], n: int) -> dict[str, float]:
    """`--child`: the agent's path alone (mode auto), in a process whose environment the parent chose."""
    set_mode("auto")
    state = lm.new_state()
    logits = lm(torch.tensor([prompt]), state)[:, -1]
    times, tokens = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        tokens.append(int(logits.argmax(-1)))
        logits = lm(torch.tensor([[tokens[-1]]]), state)[:, -1]
        times.append(time.perf_counter() - t0)
    return {
        "tok_s": round(n / sum(times), 1),
        "median_step_ms": round(1e3 * statistics.median(times), 3),
        "tokens_sha256": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16],
        "last_logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16],
    }


def wait_policies(args: argparse.Namespace, burn: int) -> dict[str, object]:
    """`--wait-policies`: decode in child processes under OpenMP's default wait policy and under
    OMP_WAIT_POLICY=PASSIVE, alternating, while `burn` busy-looping processes of ours load the CPU."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burn)]
    runs: dict[str, list[dict[str, float]]] = {"default": [], "PASSIVE": []}
    try:
        time.sleep(1.0)
        for _ in range(args.policy_repeats):
            for policy in runs:
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy != "default":
                    env["OMP_WAIT_POLICY"] = policy
                cmd = [sys.executable, __file__, "--child", "--tokens", str(args.tokens)]
                cmd += ["--prompt-len", str(args.prompt_len), "--model", args.model]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                runs[policy].append({**json.loads(out), "load_avg": round(os.getloadavg()[0], 2)})
    finally:
        for p in burners:
            p.kill()
            p.wait()
    outputs = {(r["tokens_sha256"], r["last_logits_sha256"]) for rs in runs.values() for r in rs}
    assert len(outputs) == 1, "the wait policy changed the tokens or the logits"
    return {
        "busy_processes": burn,
        "same_tokens_and_logits": True,
        "runs": runs,
        **{f"{p}_median_tok_s": statistics.median(r["tok_s"] for r in runs[p]) for p in runs},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "model" / "default"))
    ap.add_argument("--tokens", type=int, default=150)
    ap.add_argument("--prompt-len", type=int, default=900)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_decode.json"))
    ap.add_argument(
        "--wait-policies",
        action="store_true",
        help="after the main run: the agent's path in child processes, default vs PASSIVE OpenMP waiting",
    )
    ap.add_argument(
        "--burn", default="0", help="busy processes of ours during --wait-policies; a list (0,1) runs each"
    )
    ap.add_argument("--policy-repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = HybridLM.from_pretrained(args.model, device="cpu")
    prompt = [10 + i % 4000 for i in range(args.prompt_len)]
    if args.child:
        print(json.dumps(child_decode(lm, prompt, args.tokens)))
        return
    load_before = os.getloadavg()
    decode_interleaved(lm, prompt[:32], 10)  # warm-up, not timed
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    steps: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        times, tokens = decode_interleaved(lm, prompt, args.tokens)
        assert tokens["ref"] == tokens["auto"], "the fast path decoded other tokens"
        for mode in MODES:
            rates[mode].append(args.tokens / sum(times[mode]))
            steps[mode].extend(times[mode])
    os.environ.pop(ENV_VAR)
    set_mode("auto")
    med = {m: statistics.median(rates[m]) for m in MODES}

    def paired(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 3)

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/cpu_decode.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # OpenMP's idle threads spin by default; under other load that collapses 2-thread decode
        # (see the docstring). Read when torch loads, so only the environment can set them.
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "tokens": args.tokens,
        "prompt_len": args.prompt_len,
        "repeats": args.repeats,
        "model": args.model,
        "model_identity": {
            "fingerprint": lm.fingerprint[:16],
            "params": lm.num_parameters(),
            "vocab_size": lm.config.vocab_size,
            "layer_types": lm.config.layer_types,
        },
        **{f"{m}_tok_s": [round(x, 1) for x in rates[m]] for m in MODES},
        **{f"{m}_median_tok_s": round(med[m], 1) for m in MODES},
        # The median step over every step of every repeat: less moved by the slowest repeats.
        **{f"{m}_median_step_ms": round(1e3 * statistics.median(steps[m]), 3) for m in MODES},
        "speedup_vs_ref": round(med["auto"] / med["ref"], 3),
        # The modes share every repeat: the median of the per-repeat ratios is less sensitive to
        # load that changes during the run than the ratio of the medians.
        "paired_speedup_vs_ref": paired("auto", "ref"),
        "same_tokens": True,
    }
    if args.wait_policies:
        result["wait_policies"] = [wait_policies(args, int(k)) for k in args.burn.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
