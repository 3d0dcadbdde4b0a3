"""Resume vs re-prefill: what saving the state buys when a session is picked up again.

For histories of about 1k, 4k, 16k and 32k tokens, in one run, with a small hybrid model on this CPU
(random weights, fp32, torch reference kernels, full attention = the exact mode):
- resume: open the database, load the snapshot of the session (recurrent state + cache pages), build
  the Agent (which also reads the session's events), prefill the new user message, first new token;
- re-prefill (the baseline, what a transcript-based agent does): open the database, read the
  session's events, render the whole history again with the chat format, prefill all of it onto an
  empty state, then the new message, first new token.
Model loading is the same for both and is left out. One session is grown to the largest length; each
shorter history is a fork of it at the turn that reached that length (fork copies no state bytes).
Resume times are the median of `--repeats`; the baseline runs once per length (it is the slow one).

    .venv/bin/python bench/resume.py [--lengths 1024 4096 16384 32768] [--threads 1]
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
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.factory import load_engine
from hybrid_agent.agent.loop import Agent
from hybrid_agent.agent.records import conversation_of
from hybrid_agent.memory import Store
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.tools.registry import ToolRegistry

LAYERS = ["mamba2", "attention", "gated_deltanet", "attention"]
WORDS = ("state", "token", "window", "snapshot", "resume", "layer", "cache", "model", "turn", "agent")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def message(i: int, chars: int) -> str:
    """Deterministic ASCII text (one token per byte with the byte tokenizer)."""
    out, k = [], i
    while sum(len(w) + 1 for w in out) < chars:
        k = (k * 1103515245 + 12345) % (1 << 31)
        out.append(WORDS[k % len(WORDS)])
    return " ".join(out)[:chars]


def no_tools(workspace: Path) -> ToolRegistry:
    """A registry without tools: the system segment stays short, so a 1k history is possible."""
    reg = ToolRegistry(workspace, load_plugins=False)
    for name in reg.names():
        reg.unregister(name)
    return reg


class FirstTokenClock:
    """Wraps an engine's next_token to note when the first new token is out."""

    def __init__(self, engine: ModelEngine) -> None:
        self.engine, self.at = engine, None
        self._next = engine.next_token

    def __enter__(self) -> FirstTokenClock:
        def timed() -> int:
            tok = self._next()
            if self.at is None:
                self.at = time.perf_counter()
            return tok

        self.engine.next_token = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.next_token = self._next  # type: ignore[method-assign]


def time_resume(
    engine: ModelEngine, db: str, session: str, ws: Path, prompt: str
) -> tuple[float, float, int]:
    """(seconds to the first new token, of which loading, state tokens after loading)."""
    with FirstTokenClock(engine) as clock:
        t0 = time.perf_counter()
        agent = Agent(engine, Store(db), no_tools(ws), workspace=ws, session_id=session, max_new_tokens=1)
        loaded = time.perf_counter() - t0
        n = engine.n_tokens
        for _ in agent.send_sync(prompt):
            pass
        assert clock.at is not None
        total = clock.at - t0
    agent.close()
    return total, loaded, n


def history_ids(engine: ModelEngine, events: list[Any]) -> list[int]:
    """The history re-rendered from the stored events: every segment, every assistant message."""
    conv = conversation_of(events)
    ids: list[int] = []
    history: list[ChatMessage] = []
    pending: list[ChatMessage] = []
    for msg in conv.messages:
        if msg.role != "assistant":
            pending.append(msg)
            continue
        seg = engine.chat.segment(history, pending, system=conv.system or "", tools=conv.tools)
        ids += engine.encode(seg)
        ids += engine.tokenizer.encode(msg.raw or msg.content, special=True)
        history += [*pending, msg]
        pending = []
    return ids


def time_reprefill(engine: ModelEngine, db: str, session: str, prompt: str) -> tuple[float, int]:
    """(seconds to the first new token, history tokens re-prefilled (the new message not counted))."""
    t0 = time.perf_counter()
    store = Store(db)
    events = store.events(session)
    conv = conversation_of(events)
    ids = history_ids(engine, events)
    n_history = len(ids)
    ids += engine.encode(
        engine.chat.segment(conv.messages, [ChatMessage("user", prompt)], system=conv.system or "")
    )
    engine.reset()
    # Nothing of this re-read is saved, so no token needs pinning until a snapshot (the agent pins a
    # turn's tokens; here that would keep the whole history in the cache and bill it to the baseline).
    engine.state.keep_from = None
    engine.prefill(ids)
    engine.next_token()
    took = time.perf_counter() - t0
    store.close()
    return took, n_history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument(
        "--turn-chars", type=int, default=1000, help="user message size while growing the session"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--window", type=int, default=None, help="attention window (both paths); default: full")
    ap.add_argument(
        "--out", type=Path, default=None, help="default: results/resume.json (resume_window.json)"
    )
    args = ap.parse_args()
    if args.out is None:
        name = "resume.json" if args.window is None else "resume_window.json"
        args.out = Path(__file__).parent / "results" / name
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = HybridConfig(vocab_size=267, d_model=args.d_model, layer_types=LAYERS)
        lm = HybridLM(cfg)
        lm.save_pretrained(root / "model")
        n_params = sum(p.numel() for p in lm.parameters())
        engine = load_engine(root / "model", window=args.window)
        db = f"sqlite:///{root / 'sessions.db'}"
        ws = root / "ws"
        ws.mkdir()

        # Grow one session; remember the first turn at or past each length.
        grow = Agent(engine, Store(db), no_tools(ws), workspace=ws, max_new_tokens=8)
        targets, at_turn = sorted(args.lengths), {}
        t_grow = time.perf_counter()
        while len(at_turn) < len(targets):
            for _ in grow.send_sync(message(grow.turn, args.turn_chars)):
                pass
            for n in targets:
                if n not in at_turn and grow.state_tokens >= n:
                    at_turn[n] = (grow.turn, grow.state_tokens)
            print(f"  grown to {grow.state_tokens} tokens (turn {grow.turn})", file=sys.stderr, flush=True)
        t_grow = time.perf_counter() - t_grow
        forks = {n: grow.store.fork_session(grow.session_id, turn).id for n, (turn, _) in at_turn.items()}
        grow.close()

        rows = []
        for n in targets:
            prompt = "and now the next question?"
            runs = [time_resume(engine, db, forks[n], ws, prompt) for _ in range(args.repeats)]
            resume_s = statistics.median(r[0] for r in runs)
            load_s = statistics.median(r[1] for r in runs)
            base_s, base_tokens = time_reprefill(engine, db, forks[n], prompt)
            rows.append({
                "target_tokens": n, "history_tokens": at_turn[n][1], "turns": at_turn[n][0],
                "reprefilled_tokens": base_tokens, "resume_s": resume_s, "resume_load_s": load_s,
                "reprefill_s": base_s, "speedup": base_s / resume_s,
            })  # fmt: skip
            r = rows[-1]
            print(f"  {n}: resume {resume_s:.3f}s, re-prefill {base_s:.2f}s", file=sys.stderr, flush=True)

    window = "full attention" if args.window is None else f"window {args.window}"
    print(f"\nresume vs re-prefill, {n_params / 1e6:.2f}M-param hybrid ({'/'.join(LAYERS)}), "
          f"d_model {args.d_model}, {window}, {args.threads} thread(s), {cpu_name()}")  # fmt: skip
    print(f"{'history':>8} {'turns':>5} {'resume s':>9} {'(load s)':>9} {'re-prefill s':>13} {'ratio':>7}")
    for r in rows:
        print(f"{r['history_tokens']:>8} {r['turns']:>5} {r['resume_s']:>9.3f} {r['resume_load_s']:>9.3f} "
              f"{r['reprefill_s']:>13.2f} {r['speedup']:>6.1f}x")  # fmt: skip
    result = {
        "benchmark": "resume vs re-prefill (bench/resume.py)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": {"cpu": cpu_name(), "threads": args.threads, "cores": os.cpu_count()},
        "load_average_at_start": load_before,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {
            "d_model": args.d_model,
            "layer_types": LAYERS,
            "params": n_params,
            "window": args.window,
            "turn_chars": args.turn_chars,
            "repeats": args.repeats,
            "grow_s": t_grow,
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
