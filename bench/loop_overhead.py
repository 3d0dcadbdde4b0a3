"""Decode through the agent loop against the engine's own decode, at the same context, in one run.

- agent: `Agent.send` of a prompt padded to about `--context` tokens, greedy, `--tokens` new tokens at
  most; tokens/s over the decode = (tokens written - 1) / (time from the first text event to the
  last), as a consumer of `send` sees it, and the loop's own `TurnEnd.tokens_per_s`;
- engine: the same engine, reset, prefilled with as many tokens as the agent's turn had before its
  decode, then `next_token` + `prefill([token])` for as many tokens as the agent wrote: the floor
  that the loop's per-token work (owner-thread hops, detokenising, the marker scans, events) adds to.
Each side runs `--repeats` times, alternating; medians.

    .venv/bin/python bench/loop_overhead.py [--model DIR] [--device cpu|cuda] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.agent.events import TextDelta, TurnEnd
from hybrid_agent.agent.factory import load_engine
from hybrid_agent.agent.loop import Agent
from hybrid_agent.memory import Store
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.tools.registry import ToolRegistry

WORDS = ["the", "state", "of", "a", "hybrid", "model", "is", "saved", "after", "every", "turn"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def agent_decode(engine: Any, root: Path, prompt: str, tokens: int, device: str) -> dict[str, Any]:
    ws = root / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    reg = ToolRegistry(ws, load_plugins=False)
    agent = Agent(engine, Store(f"sqlite:///{root / 'agent.db'}"), reg, workspace=ws, max_new_tokens=tokens)
    stamps: list[float] = []
    end: TurnEnd | None = None

    def on_event(ev: Any) -> None:
        nonlocal end
        if isinstance(ev, TextDelta):
            sync(device)
            stamps.append(time.perf_counter())
        elif isinstance(ev, TurnEnd):
            end = ev

    agent.send_sync(prompt, on_event=on_event)
    agent.close()
    assert end is not None
    n = end.completion_tokens
    return {
        "completion_tokens": n,
        "context_tokens": end.state_tokens - n,
        "text_events": len(stamps),
        # The first text event carries the first token alone (agent/decode_steps.py), the last one
        # comes when the message is over.
        "consumer_tokens_per_s": (n - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0,
        "loop_tokens_per_s": end.tokens_per_s,
    }


def engine_decode(engine: Any, context: int, tokens: int, device: str) -> float:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (context,), generator=gen).tolist()
    engine.reset()
    engine.prefill(ids)
    tok = engine.next_token()
    sync(device)
    t = time.perf_counter()
    for _ in range(tokens - 1):
        engine.prefill([tok])
        tok = engine.next_token()
    sync(device)
    return (tokens - 1) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the packaged default model)")
    ap.add_argument(
        "--random", action="store_true", help="a small random-weight model instead (it writes every token)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context", type=int, default=1024, help="about this many tokens before the decode")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens at most")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    tmp_model = tempfile.TemporaryDirectory()
    model_dir = args.model
    if args.random:
        torch.manual_seed(0)
        cfg = HybridConfig(vocab_size=267, d_model=128, layer_types=["mamba2", "attention", "gated_deltanet"])
        HybridLM(cfg).save_pretrained(Path(tmp_model.name))
        model_dir = tmp_model.name
    engine = load_engine(model_dir, device=args.device)
    words = (WORDS * (args.context // len(WORDS) + 1))[: max(1, args.context // 5)]
    prompt = "Please write a long story about this text: " + " ".join(words)
    agent_runs: list[dict[str, Any]] = []
    engine_runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):  # the first of each warms up and is not counted
            run = agent_decode(engine, Path(tmp) / f"r{i}", prompt, args.tokens, args.device)
            rate = engine_decode(engine, run["context_tokens"], max(2, run["completion_tokens"]), args.device)
            print(f"  agent {run['consumer_tokens_per_s']:.1f} tok/s ({run['completion_tokens']} tokens "
                  f"at {run['context_tokens']}), engine {rate:.1f} tok/s", file=sys.stderr)  # fmt: skip
            if i:
                agent_runs.append(run)
                engine_runs.append(rate)
    agent_rate = statistics.median(r["consumer_tokens_per_s"] for r in agent_runs)
    engine_rate = statistics.median(engine_runs)
    result = {
        "benchmark": "decode through the agent loop vs the engine's own (bench/loop_overhead.py)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "cores": os.cpu_count(),
        "torch_threads": args.threads,
        "load_average_at_start": load_before,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "model": "random" if args.random else engine.model_name,
        "settings": {"context": args.context, "tokens": args.tokens, "repeats": args.repeats},
        "agent_runs": agent_runs,
        "engine_tokens_per_s_runs": engine_runs,
        "agent_tokens_per_s": agent_rate,
        "engine_tokens_per_s": engine_rate,
        "agent_over_engine": agent_rate / engine_rate,
    }
    print(f"agent {agent_rate:.1f} tok/s, engine {engine_rate:.1f} tok/s: "
          f"{100 * (1 - agent_rate / engine_rate):.1f}% slower through the loop")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_model.cleanup()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
