"""Time from the spawn of `hybrid-agent serve` to its first `GET /health` answer, and to the first token
of one streamed chat request after it: how long a user waits for a server.

Each start is a fresh `python -m hybrid_agent serve --port 0` subprocess (HYBRID_AGENT_STARTUP_TRACE
on, agent/startup.py); the clock starts before it is spawned. `health_s`: the first 200 of
`/health` (polled every 10 ms once the process printed its address); `first_token_s`: the first
content delta of a streamed `/v1/chat/completions` sent right after. Each start's trace phases are
kept (`phases`, seconds from the spawn; a tree from before a phase has none of it).

Trees, rounds, the checkpoint shapes and `--budget` are those of bench/cold_start.py (whose helpers
this script uses): every tree has its own database, settings and cache folders; one untimed start
per tree warms the page cache and the fingerprint cache; the trees take turns, their order
alternating between rounds; the JSON is rewritten after every start.

    python bench/serve_start.py --tree before=/tmp/site-before --tree after=/tmp/site-after \
        --shape olmo-1b --rounds 5 --out serve_start_cpu.json

On the 2-core CPU machine (before: a3de715, after: the preload in `serve`), the overlap gained nothing
measurable, the read and the imports sharing the same two cores: serve_start_olmo1b_cpu_s8.json
(5 rounds), serve_start_olmo1b_run2_cpu_s8.json (8 rounds) and serve_start_default_cpu_s8.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cold_start  # bench/ is not a package: its scripts import each other by path


def timed_start(tree: dict[str, Any], args: list[str], timeout: float) -> dict[str, Any]:
    """One `serve` process of `tree`: seconds from spawn to its address, /health and a first token."""
    cmd = [sys.executable, "-m", "hybrid_agent", "serve", "--port", "0", "--db", tree["db"], *args]
    log = Path(tree["workspace"]) / "serve.log"
    cached = cold_start.fingerprint_file(tree)
    out: dict[str, Any] = {}
    spawned = time.time()
    t0 = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, env=tree["env"], cwd=tree["workspace"], stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        while "serving" not in (text := log.read_text()):
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise SystemExit(f"{tree['name']}: serve did not start (exit {proc.poll()}): {text[-500:]}")
            time.sleep(0.01)
        name, rest = text.split("hybrid-agent: serving ", 1)[1].split(" on ", 1)
        url = rest.split()[0].removesuffix("/v1")
        out["address_s"] = time.perf_counter() - t0
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise SystemExit(f"{tree['name']}: /health never answered: {log.read_text()[-500:]}")
            time.sleep(0.01)
        out["health_s"] = time.perf_counter() - t0
        body = {
            "model": name,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "stream": True,
        }
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for line in resp:
                if line.startswith(b"data: {") and b'"content"' in line:
                    out["first_token_s"] = time.perf_counter() - t0
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out["phases"] = {}
    for line in log.read_text().splitlines():
        if (
            line.startswith(cold_start.TRACE_PREFIX)
            and len(parts := line[len(cold_start.TRACE_PREFIX) :].split()) == 2
        ):
            out["phases"][parts[0]] = float(parts[1]) - spawned
    after = cold_start.fingerprint_file(tree)
    out["fingerprint_cache"] = "none" if after is None else "hit" if after == cached else "stored"
    out["first_start"] = out["fingerprint_cache"] == "stored"
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return summary
    for key in ("address_s", "health_s", "first_token_s"):
        summary[f"{key}_median"] = round(statistics.median(r[key] for r in rows if key in r), 3)
    summary["health_s_all"] = [round(r["health_s"], 3) for r in rows]
    phases = sorted({p for r in rows for p in r["phases"]}, key=lambda p: cold_start.median_phase(rows, p))
    summary["phases_median_s"] = {p: round(cold_start.median_phase(rows, p), 3) for p in phases}
    return summary


def report(head: dict[str, Any], trees: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    done = min((len(t["starts"]) for t in trees), default=0)
    out = head | {"complete": complete, "rounds_done": done, "trees": {}}
    for tree in trees:
        rows = [r for r in tree["starts"][:done] if not r["first_start"]]
        starts = [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in tree["starts"]
        ]
        out["trees"][tree["name"]] = {"site": tree["site"], "first_start": tree.get("first_start"),
                                      "serve": summarize(rows), "starts": starts}  # fmt: skip
    return out


def main() -> None:
    began = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="NAME=SITE, repeatable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shape", default="default", help="default (packaged), olmo7b, olmo-1b, olmo-tiny")
    p.add_argument("--model", default=None, help="a model folder instead of --shape's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one start may take")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds: no round begins that would end past it"
    )
    p.add_argument("--out", default=None, help="JSON file to write (rewritten after every start)")
    a = p.parse_args()
    if a.rounds < 1 or (a.budget is not None and not a.budget > 0):
        p.error("--rounds takes a whole number >= 1 and --budget a number of seconds > 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    scratch = Path(tempfile.mkdtemp(prefix="serve-start-"))
    try:
        model = a.model
        if model is None and a.shape != "default":
            model = str(cold_start.write_random_checkpoint(scratch / "model", a.shape))
        if model:
            cold_start.settle_checkpoint(Path(model))
        head = {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "shape": a.shape, "model": a.model, "device": a.device, "rounds": a.rounds,
        }  # fmt: skip
        trees = [cold_start.make_tree(*(t.split("=", 1)), scratch) for t in a.tree]
        trees = trees or [cold_start.make_tree("this", None, scratch)]
        args = ["--device", a.device, *(["--model", model] if model else [])]
        for tree in trees:
            tree["starts"] = []
        for tree in trees:
            tree["first_start"] = timed_start(tree, args, a.timeout)
            cold_start.write_json(a.out, report(head, trees, False))
        slowest = 0.0
        for r in range(a.rounds):
            if a.budget is not None and time.perf_counter() - began + slowest > a.budget:
                print(f"round {r}: not started, it would end past --budget {a.budget:g} s", file=sys.stderr)
                break
            t_round = time.perf_counter()
            for tree in trees if r % 2 == 0 else trees[::-1]:
                row = timed_start(tree, args, a.timeout) | {"round": r}
                tree["starts"].append(row)
                cold_start.write_json(a.out, report(head, trees, False))
                print(f"round {r} {tree['name']}: /health {row['health_s']:.2f} s, first token "
                      f"{row.get('first_token_s', float('nan')):.2f} s", file=sys.stderr)  # fmt: skip
            slowest = max(slowest, time.perf_counter() - t_round)
        data = report(head, trees, True)
        cold_start.write_json(a.out, data)
        print(json.dumps(data, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
