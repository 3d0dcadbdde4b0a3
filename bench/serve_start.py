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

import json
import shutil
import signal
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
    out["phases"] = cold_start.trace_phases(log.read_text(), spawned)
    out |= cold_start.cache_outcome(tree, cached)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return cold_start.summarize_starts(rows, ("address_s", "health_s", "first_token_s"), "health_s")


def main() -> None:
    began = time.perf_counter()
    p = cold_start.start_parser(__doc__)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one start may take")
    a = cold_start.parse_start_args(p)
    scratch = Path(tempfile.mkdtemp(prefix="serve-start-"))
    try:
        model = cold_start.model_for(a, scratch)
        args = ["--device", a.device, *(["--model", model] if model else [])]
        cold_start.run_starts(
            a, began, scratch, cold_start.run_header(a), "serve", summarize,
            lambda tree: timed_start(tree, args, a.timeout),
            lambda row: f"/health {row['health_s']:.2f} s, first token {row.get('first_token_s', -1):.2f} s",
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
