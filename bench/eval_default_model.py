"""Evaluate a native agent model (the packaged default unless --model) through the real agent.

    python bench/eval_default_model.py [--model DIR] [--per-category 24] [--limit N] [--workers 2]
    python bench/eval_default_model.py --suite generator [--model DIR] [--per-kind 10] [--recall-n 10]
        [--workers 2] [--speed [--speed-baseline DIR] [--speed-repeats 5]] [--wide 0]
        [--out bench/results/eval_default_model.json]
    python bench/eval_default_model.py --handwritten [--model DIR] --out F.json

What is measured (held-out seeds, never used for training data: training uses 0..N, this 10**6 + i):
- tool-call validity: of all tool calls the model wrote, the share that parsed as JSON, named a real
  tool and whose arguments passed the tool's own pydantic validation;
- task success per task kind (scripts/agent_tasks.py): judged by the task's check on the workspace
  (the files after the turn) and on facts in the answer (a value, a path), not by string match
  against the training answer;
- memory recall at 5, 20 and 50 turns of distance: a fact stated in turn 1, `d - 1` filler turns
  (chit-chat and other facts), then the question; once straight through, once with the session saved,
  the agent closed and a fresh agent (model reloaded from disk) resumed from the database before the
  question. Same episodes, greedy decoding, so the two columns should agree;
- with --speed: decode tokens/s and first-token latency of a turn on this machine's CPU. With
  --speed-baseline DIR, the same measure of another model in turns with this one (A, B, A, B, ...;
  medians of --speed-repeats each, and their ratio: on a shared CPU only a paired ratio means much),
  and the tokens each tokenizer needs for the text the evaluated model wrote in this run (answers
  and tool calls): tokens/s times characters per token is what a reader sees.

`--handwritten`: instead, one session of eight requests written by hand, outside the generator's
phrasings, file names and fact keys (each with its own check; "Thanks!" is not scored).

`--wide P` (0 by default: the pools the eval has always used) draws names and values from made-up
words with probability P (scripts/agent_workspaces.py WIDE): the same checks on requests whose words
no pool holds, a test of copying rather than of the word pools.

Every agent here is `agent.Agent` over a real `memory.Store` (SQLite file) and the built-in tools.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing import Pool
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

sys.path.insert(0, str(ROOT / "bench"))

import agent_workspaces  # noqa: E402
import eval_heldout  # noqa: E402
from agent_tasks import CHITCHAT, TASKS, make_facts, make_task  # noqa: E402
from agent_workspaces import make_workspace  # noqa: E402

EVAL_SEED = 10**6
DISTANCES = (5, 20, 50)
_ENGINE: Any = None
_MODEL_DIR: str | None = None


def _set_wide(wide: float) -> None:
    agent_workspaces.WIDE = wide


def _engine(model_dir: str | None) -> Any:
    """One engine per process, reset for each new session (Agent.new_session resets it)."""
    global _ENGINE, _MODEL_DIR
    if _ENGINE is None or model_dir != _MODEL_DIR:
        import torch
        from hybrid_agent.agent.factory import load_engine

        torch.set_num_threads(1)
        _ENGINE, _MODEL_DIR = load_engine(model_dir, device="cpu"), model_dir
    return _ENGINE


def run_turn(agent: Any, text: str) -> tuple[str, list[tuple[str, dict, bool]]]:
    """(answer text, [(tool, arguments, valid)]) of one turn."""
    from hybrid_agent.agent.events import TextDelta, ToolCallRequested, ToolResultEvent

    answer, calls, pending = [], [], {}
    for ev in agent.send_sync(text):
        if isinstance(ev, TextDelta):
            answer.append(ev.text)
        elif isinstance(ev, ToolCallRequested):
            pending[ev.call_id] = ev
        elif isinstance(ev, ToolResultEvent):
            req = pending.pop(ev.call_id)
            malformed = ev.is_error and ev.text.startswith("error: ") and "Write a tool call as" in ev.text
            valid = not malformed and req.tool in agent.registry
            if valid:
                try:
                    agent.registry.get(req.tool).parse_arguments(req.arguments)
                except Exception:
                    valid = False
            calls.append((req.tool, req.arguments, valid))
    return "".join(answer), calls


def _new_agent(model_dir: str | None, db: Path, workspace: Path, session_id: str | None = None) -> Any:
    from hybrid_agent.agent import Agent
    from hybrid_agent.memory import Store

    return Agent(
        _engine(model_dir), Store(str(db)), workspace=workspace, session_id=session_id, mode="auto",
        max_new_tokens=256, max_tool_rounds=4,
    )  # fmt: skip


def eval_task(job: tuple[str | None, str, int]) -> dict[str, Any]:
    model_dir, kind, i = job
    rng = random.Random(f"eval:{EVAL_SEED + i}:{kind}")
    with tempfile.TemporaryDirectory(prefix="eval-task-") as tmp:
        ws = make_workspace(rng, Path(tmp) / "ws")
        task = make_task(rng, ws, [kind])
        agent = _new_agent(model_dir, Path(tmp) / "s.db", ws.root)
        try:
            answer, calls = run_turn(agent, task.prompt)
        finally:
            agent.close()
        ok = task.check(ws.root, answer)
    return {"kind": task.kind, "prompt": task.prompt, "answer": answer, "ok": ok, "calls": calls}


def eval_heldout_task(job: tuple[str | None, str, int]) -> dict[str, Any]:
    """`_heldout_task`, tried twice: an error of the machinery (not of the model: its answers are only
    judged) must not end a run of 216; a task that fails twice is recorded, with its error, as failed."""
    error = ""
    for _ in range(2):
        try:
            return _heldout_task(job)
        except Exception as e:  # recorded in the JSON, counted in the summary
            error = f"{type(e).__name__}: {e}"
    _, category, _ = job
    return {"category": category, "prompt": "", "answer": "", "ok": False, "calls": [], "error": error}


def _heldout_task(job: tuple[str | None, str, int]) -> dict[str, Any]:
    """One held-out task (bench/eval_heldout.py) in a fresh workspace and session, judged by its rule."""
    model_dir, category, i = job
    rng = random.Random(f"heldout:{EVAL_SEED}:{category}:{i}")
    if category == "recall_resume":
        return eval_heldout_recall(model_dir, rng)
    with tempfile.TemporaryDirectory(prefix="eval-heldout-") as tmp:
        ws = eval_heldout.make_workspace(rng, Path(tmp) / "ws")
        task = eval_heldout.make_task(rng, ws, category)
        agent = _new_agent(model_dir, Path(tmp) / "s.db", ws.root)
        try:
            answer, calls = run_turn(agent, task.prompt)
        finally:
            agent.close()
        ok = bool(task.rule(ws.root, answer, [(c[0], c[1]) for c in calls]))
    return {"category": category, "prompt": task.prompt, "answer": answer, "ok": ok, "calls": calls}


def eval_heldout_recall(model_dir: str | None, rng: random.Random) -> dict[str, Any]:
    """A held-out fact, filler turns and the question: straight through, then the same turns with the
    session saved, the agent closed and the model reloaded before the question. Judged on the resume."""
    global _ENGINE
    script = eval_heldout.make_recall(rng, rng.randint(2, 5))
    out: dict[str, Any] = {"category": "recall_resume", "prompt": script.question, "calls": []}
    for resume in (False, True):
        with tempfile.TemporaryDirectory(prefix="eval-heldout-recall-") as tmp:
            ws = Path(tmp) / "ws"
            ws.mkdir()
            db = Path(tmp) / "s.db"
            agent = _new_agent(model_dir, db, ws)
            for text in script.turns:
                run_turn(agent, text)
            if resume:
                sid = agent.session_id
                agent.close()
                _ENGINE = None  # nothing survives but the database
                agent = _new_agent(model_dir, db, ws, session_id=sid)
            answer, calls = run_turn(agent, script.question)
            agent.close()
        out["resumed" if resume else "straight"] = {"answer": answer, "ok": script.value in answer}
        out["calls"] += calls
    out["answer"], out["ok"] = out["resumed"]["answer"], out["resumed"]["ok"]
    return out


def summarize_heldout(rows: list[dict]) -> dict[str, Any]:
    calls = [c for t in rows for c in t["calls"]]
    per = {}
    for cat in eval_heldout.CATEGORIES:
        got = [t for t in rows if t["category"] == cat]
        if got:
            per[cat] = {"n": len(got), "success": round(sum(t["ok"] for t in got) / len(got), 3)}
    recall = [t for t in rows if t["category"] == "recall_resume"]
    out: dict[str, Any] = {
        "tasks": len(rows),
        "errors": sum(bool(t.get("error")) for t in rows),
        "tool_calls": len(calls),
        "tool_call_validity": round(sum(c[2] for c in calls) / max(1, len(calls)), 3),
        "task_success": round(sum(t["ok"] for t in rows) / max(1, len(rows)), 3),
        "success_per_category": per,
        "min_category_success": min((v["success"] for v in per.values()), default=0.0),
    }
    if recall:
        n = len(recall)
        out["recall_resume"] = {
            "straight": round(sum(t["straight"]["ok"] for t in recall) / n, 3),
            "resumed": round(sum(t["resumed"]["ok"] for t in recall) / n, 3),
            "same_answer": round(
                sum(t["straight"]["answer"] == t["resumed"]["answer"] for t in recall) / n, 3
            ),
        }
    return out


def heldout_jobs(
    model_dir: str | None, per_category: int, limit: int | None
) -> list[tuple[str | None, str, int]]:
    """Round-robin over the categories, so that `--limit N` still covers every category."""
    jobs = [(model_dir, cat, i) for i in range(per_category) for cat in eval_heldout.CATEGORIES]
    return jobs[:limit] if limit is not None else jobs


def eval_recall(job: tuple[str | None, int, int]) -> dict[str, Any]:
    """One episode at distance `d`, answered straight through and after a save/close/resume."""
    model_dir, d, i = job
    rng = random.Random(f"recall:{EVAL_SEED + i}:{d}")
    facts = make_facts(rng, 3)
    target = facts[0]
    script = [target.statement(rng)[0]]
    distractor_at = set(rng.sample(range(d - 1), min(2, d - 1)))
    others = iter(facts[1:])
    for j in range(d - 1):
        script.append(next(others).statement(rng)[0] if j in distractor_at else rng.choice(CHITCHAT)[0])
    question = target.question(rng)[0]
    out: dict[str, Any] = {"distance": d, "value": target.value, "question": question}
    for resume in (False, True):
        with tempfile.TemporaryDirectory(prefix="eval-recall-") as tmp:
            ws = Path(tmp) / "ws"
            ws.mkdir()
            db = Path(tmp) / "s.db"
            agent = _new_agent(model_dir, db, ws)
            for text in script:
                run_turn(agent, text)
            if resume:
                sid = agent.session_id
                agent.close()  # the process is gone as far as the session is concerned
                global _ENGINE
                _ENGINE = None  # reload the model from disk: nothing survives but the database
                agent = _new_agent(model_dir, db, ws, session_id=sid)
            answer, _ = run_turn(agent, question)
            agent.close()
        out["resumed" if resume else "straight"] = {"answer": answer, "ok": target.value in answer}
    return out


def measure_speed(model_dir: str | None, n_decode: int = 128) -> dict[str, Any]:
    """First-token latency of a turn (prefill the user segment + one decode step, after a warm-up
    turn) and steady decode tokens/s, on this CPU with all its threads."""
    import torch
    from hybrid_agent.agent.factory import load_engine
    from hybrid_agent.model.chat import DEFAULT_SYSTEM_PROMPT, ChatMessage
    from hybrid_agent.tools import ToolRegistry

    eng = load_engine(model_dir, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tools = [s["function"] for s in ToolRegistry(tmp, load_plugins=False).schemas()]
    chat = eng.chat
    first = chat.segment([], [ChatMessage("user", "Hello.")], system=DEFAULT_SYSTEM_PROMPT, tools=tools)
    t0 = time.perf_counter()
    eng.prefill(eng.encode(first))
    system_prefill_s = time.perf_counter() - t0
    eng.prefill([eng.next_token()])
    history = [ChatMessage("user", "Hello."), ChatMessage("assistant", "Hi.", raw="Hi.<|end|>")]
    latencies = []
    for text in ("What is in the src folder?", "Where is load_config defined?", "Thanks!"):
        seg = chat.segment(history, [ChatMessage("user", text)])
        t0 = time.perf_counter()
        eng.prefill(eng.encode(seg))
        tok = eng.next_token()
        latencies.append(time.perf_counter() - t0)
        eng.prefill([tok])
    t0 = time.perf_counter()
    for _ in range(n_decode):
        eng.prefill([eng.next_token()])
    decode_s = time.perf_counter() - t0
    return {
        "threads": torch.get_num_threads(),
        "system_segment_prefill_s": round(system_prefill_s, 3),
        "first_token_latency_ms": [round(x * 1000, 1) for x in latencies],
        "decode_tok_s": round(n_decode / decode_s, 1),
        "decode_tokens": n_decode,
    }


HANDWRITTEN: list[tuple[str, Any]] = [
    ("What is in src?", lambda ws, a: "settings.py" in a),
    ("Create notes.md with the text: buy milk",
     lambda ws, a: (ws / "notes.md").is_file() and (ws / "notes.md").read_text() == "buy milk\n"),
    ("Add the line '- bread' at the end of list.md.",
     lambda ws, a: (ws / "list.md").read_text() == "# Shopping\n\n- eggs\n- bread\n"),
    ("What is PORT in src/settings.py?", lambda ws, a: "8080" in a),
    ("Remember that my dog is called Rex.", lambda ws, a: "Rex" in a),
    ("Thanks!", None),
    ("What is my dog called?", lambda ws, a: "Rex" in a),
    ("Change PORT in src/settings.py to 9090.",
     lambda ws, a: "PORT = 9090" in (ws / "src" / "settings.py").read_text()),
]  # fmt: skip


def eval_handwritten(model_dir: str | None) -> dict[str, Any]:
    """HANDWRITTEN in one session over src/settings.py (PORT = 8080) and list.md."""
    with tempfile.TemporaryDirectory(prefix="eval-hand-") as tmp:
        ws = Path(tmp) / "ws"
        (ws / "src").mkdir(parents=True)
        (ws / "src" / "settings.py").write_text('PORT = 8080\nNAME = "demo"\n')
        (ws / "list.md").write_text("# Shopping\n\n- eggs\n")
        agent = _new_agent(model_dir, Path(tmp) / "s.db", ws)
        rows = []
        try:
            for request, check in HANDWRITTEN:
                answer, calls = run_turn(agent, request)
                ok = None if check is None else bool(check(ws, answer))
                rows.append({"request": request, "answer": answer, "calls": [c[:2] for c in calls], "ok": ok})
        finally:
            agent.close()
    scored = [r for r in rows if r["ok"] is not None]
    return {"ok": sum(r["ok"] for r in scored), "of": len(scored), "turns": rows}


def paired_speed(model_dir: str | None, baseline: str, repeats: int, tasks: list[dict]) -> dict[str, Any]:
    """measure_speed of the model and of `baseline` in turns; medians, ratio, characters per token."""
    import statistics

    from hybrid_agent.agent.factory import resolve_model_dir
    from hybrid_agent.model.tokenizer import Tokenizer

    runs: dict[str, list[dict[str, Any]]] = {"model": [], "baseline": []}
    for _ in range(repeats):
        runs["model"].append(measure_speed(model_dir))
        runs["baseline"].append(measure_speed(baseline))
    written = "".join(t["answer"] + json.dumps([c[:2] for c in t["calls"]]) for t in tasks)
    out: dict[str, Any] = {"repeats": repeats, "baseline_model": baseline}
    for name, rows in runs.items():
        tok = Tokenizer.from_file(Path(resolve_model_dir(model_dir if name == "model" else baseline)))
        out[name] = {
            "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in rows),
            "decode_tok_s": [r["decode_tok_s"] for r in rows],
            "first_token_latency_ms_median": statistics.median(
                x for r in rows for x in r["first_token_latency_ms"]
            ),
            "system_segment_prefill_s_median": statistics.median(r["system_segment_prefill_s"] for r in rows),
            "chars_per_token_of_written_text": round(len(written) / max(1, len(tok.encode(written))), 3),
        }
    ratios = [
        m["decode_tok_s"] / b["decode_tok_s"] for m, b in zip(runs["model"], runs["baseline"], strict=True)
    ]
    out["decode_tok_s_ratio_median"] = round(statistics.median(ratios), 3)
    out["written_chars"] = len(written)
    return out


def summarize(tasks: list[dict], recalls: list[dict]) -> dict[str, Any]:
    calls = [c for t in tasks for c in t["calls"]]
    per_kind = {}
    for kind in TASKS:
        rows = [t for t in tasks if t["kind"] == kind]
        if rows:
            per_kind[kind] = round(sum(t["ok"] for t in rows) / len(rows), 3)
    recall = {}
    for d in sorted({r["distance"] for r in recalls}):
        rows = [r for r in recalls if r["distance"] == d]
        recall[str(d)] = {
            "n": len(rows),
            "straight": round(sum(r["straight"]["ok"] for r in rows) / len(rows), 3),
            "resumed": round(sum(r["resumed"]["ok"] for r in rows) / len(rows), 3),
            "same_answer": round(
                sum(r["straight"]["answer"] == r["resumed"]["answer"] for r in rows) / len(rows), 3
            ),
        }
    return {
        "tool_calls": len(calls),
        "tool_call_validity": round(sum(c[2] for c in calls) / max(1, len(calls)), 3),
        "task_success": round(sum(t["ok"] for t in tasks) / max(1, len(tasks)), 3),
        "task_success_per_kind": per_kind,
        "recall": recall,
    }


def run_heldout(a: argparse.Namespace, t0: float) -> dict[str, Any]:
    import torch

    with Pool(a.workers) as pool:
        rows = pool.map(eval_heldout_task, heldout_jobs(a.model, a.per_category, a.limit), chunksize=1)
    result: dict[str, Any] = {
        "benchmark": "eval_default_model_heldout",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": a.model or "model/default (packaged)",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads_per_worker": 1, "workers": a.workers},
        "settings": {"suite": "heldout", "per_category": a.per_category, "limit": a.limit,
                     "greedy": True, "seed": EVAL_SEED},
        "summary": summarize_heldout(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "tasks": rows,
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "seconds")}, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the packaged model/default)")
    p.add_argument("--per-kind", type=int, default=10)
    p.add_argument("--recall-n", type=int, default=10)
    p.add_argument("--distances", default=",".join(map(str, DISTANCES)))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--speed-baseline", default=None, help="with --speed: also time this model, in turns")
    p.add_argument("--speed-repeats", type=int, default=5)
    p.add_argument("--wide", type=float, default=0.0, help="share of made-up names and values")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_default_model.json")
    p.add_argument("--handwritten", action="store_true", help="only the hand-written session")
    p.add_argument(
        "--suite", choices=("heldout", "generator"), default="heldout",
        help="heldout: bench/eval_heldout.py's categories; generator: the training generator's kinds",
    )  # fmt: skip
    p.add_argument("--per-category", type=int, default=24, help="held-out tasks per category")
    p.add_argument("--limit", type=int, default=None, help="run only the first N held-out tasks")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.suite == "heldout" and not a.handwritten:
        return run_heldout(a, t0)
    if a.handwritten:
        date = datetime.now(UTC).isoformat(timespec="seconds")
        hand = {"benchmark": "eval_default_model_handwritten", "date": date,
                "model": a.model or "model/default (packaged)", **eval_handwritten(a.model)}  # fmt: skip
        a.out.write_text(json.dumps(hand, indent=1) + "\n")
        print(json.dumps({k: hand[k] for k in ("model", "ok", "of")}))
        return hand
    task_jobs = [(a.model, kind, i) for kind in TASKS for i in range(a.per_kind)]
    distances = [int(x) for x in a.distances.split(",") if x]
    recall_jobs = [(a.model, d, i) for d in distances for i in range(a.recall_n)]
    with Pool(a.workers, initializer=_set_wide, initargs=(a.wide,)) as pool:
        tasks = pool.map(eval_task, task_jobs, chunksize=1)
        recalls = pool.map(eval_recall, recall_jobs, chunksize=1)
    import torch

    result: dict[str, Any] = {
        "benchmark": "eval_default_model",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": a.model or "model/default (packaged)",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "settings": {
            "per_kind": a.per_kind,
            "recall_n": a.recall_n,
            "greedy": True,
            "seeds_from": EVAL_SEED,
            "wide": a.wide,
        },
        "summary": summarize(tasks, recalls),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if a.speed and a.speed_baseline is None:
        result["speed"] = measure_speed(a.model)
    elif a.speed:
        result["speed"] = paired_speed(a.model, a.speed_baseline, a.speed_repeats, tasks)
    result["tasks"], result["recalls"] = tasks, recalls
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "speed", "seconds") if k in result}, indent=1))
    return result


if __name__ == "__main__":
    main()
