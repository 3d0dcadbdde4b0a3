"""Time to first token of `hybrid-agent run`, from the process start: a new session and a resumed one.

Each run is a fresh `python -m hybrid_agent run --output-format stream-json --include-partial-messages`
subprocess; the clock starts before it is spawned and stops at the first text delta (`stream_event`) on
its stdout. Also timed: `run --help` (the imports of the CLI), the moment the `system/init` line
appears, the `result` line, the decode rate between the first delta and the result
(output_tokens - 1 over that time; 0 when the model answered in one token) and the decode rate the
result reports (`tokens_per_s`: the agent's time in decoding only).

The start's phases (`phases_median_s` in the JSON: settings read, torch imported and the weights' read
started, device ready, weights read, agent modules imported, database open, model taken, session made)
come from the trace each run writes on stderr (HYBRID_AGENT_STARTUP_TRACE=1, agent/startup.py); a
tree from before the trace has none. `load_gb_s_median`: the weights' bytes over the time from
`device-ready` to `weights-read` (building the model, allocating it, reading and copying the weights).

Trees: `--tree NAME=SITE` (repeatable) runs the package found in the folder SITE (a PYTHONPATH entry
holding `hybrid_agent/`, e.g. one made by scripts/device_env.sh with HYBRID_AGENT_SITE); without it,
the package this script imports. Every tree has its own database, workspace, settings folder and
cache folder (the model fingerprint cache, model/checkpoints/fingerprint_cache.py); one untimed run
per tree first warms the page cache and that cache ("first_start" in the JSON: a start that hashes
the weights). Then, per round, each tree runs a new session, then resumes that session, the trees in
turn (their order alternates between rounds), so load from other processes hits them alike.

    python bench/cold_start.py --tree base=/tmp/site-base --tree new=/tmp/site-new --rounds 5 \
        --out bench/results/cold_start_cpu.json
    # On a GPU machine: an OLMo Hybrid 7B-shaped random bf16 checkpoint (13 GB) written to a temp folder
    python bench/cold_start.py --shape olmo7b --device cuda --rounds 3 --out cold_start_h100.json

`--shape default` uses the packaged default model (or `--model DIR`); `--shape olmo-tiny` is a small
random checkpoint of the same family, to check the script on a CPU; `--shape olmo-1b` a 1.3 GB one, a
weights' read that takes a while on a CPU. `--keep-model DIR` writes the random checkpoint there and
keeps it (a later run passes it as `--model DIR`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACE_PREFIX = "hybrid-agent: startup "  # agent/startup.py's trace lines (its TRACE_ENV turns them on)
# transformers' OlmoHybridConfig arguments: its defaults are OLMo Hybrid 7B; the tiny one checks this
# script on a CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "olmo7b": {},
    # About 0.65 B parameters, 1.3 GB in bf16 (2.6 GB as the CPU's float32): a load that takes a
    # while on a CPU, to measure how the weights' read overlaps the rest of the start there.
    "olmo-1b": dict(
        hidden_size=1536, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=12, linear_num_key_heads=12, linear_num_value_heads=12, linear_key_head_dim=64,
        linear_value_head_dim=128, layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 3,
    ),
    "olmo-tiny": dict(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=16,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    ),
}  # fmt: skip


def write_random_checkpoint(folder: Path, shape: str) -> Path:
    """A native checkpoint (config.json + model.safetensors in bf16) of `shape`, with random finite
    weights, written tensor by tensor (host memory stays small); the default model's tokenizer."""
    import torch
    from hybrid_agent.model.checkpoints import olmo_hybrid
    from hybrid_agent.model.skeleton import skeleton
    from transformers import OlmoHybridConfig

    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape}; use default, {' or '.join(SHAPES)}")
    cfg = olmo_hybrid.hybrid_config(OlmoHybridConfig(**SHAPES[shape]).to_dict())
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder)
    names = {n: tuple(t.shape) for n, t in skeleton(cfg).state_dict().items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shp in names.items():
        n = 2 * int(torch.Size(shp).numel())
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(32 << 20, generator=gen) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy()
    with (folder / "model.safetensors").open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for i, shp in enumerate(names.values()):
            left, start = 2 * int(torch.Size(shp).numel()), (i * 7919 * 2) % (pool.size // 2)
            while left:
                piece = pool[start : start + left]
                f.write(piece.tobytes())
                left -= piece.size
                start = 0
    shutil.copy(ROOT / "model" / "default" / "tokenizer.json", folder / "tokenizer.json")
    return folder


def timed_run(tree: dict[str, Any], args: list[str], timeout: float) -> dict[str, Any]:
    """One CLI subprocess of `tree`; the seconds from spawn to each milestone of its stream."""
    cmd = [sys.executable, "-m", "hybrid_agent", *args]
    out: dict[str, Any] = {}
    spawned = time.time()  # the trace's clock (agent/startup.py): wall-clock seconds
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=tree["env"], cwd=tree["workspace"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if now > timeout:
            proc.kill()
            raise SystemExit(f"{tree['name']}: {' '.join(args)} ran over {timeout} s")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = obj.get("type")
        if kind == "system" and "init_s" not in out:
            out["init_s"] = now
        elif kind == "stream_event" and "first_token_s" not in out:
            out["first_token_s"] = now
        elif kind == "result":
            out["result_s"] = now
            out["session_id"] = obj.get("session_id")
            out["output_tokens"] = (obj.get("usage") or {}).get("output_tokens", 0)
            out["agent_tok_s"] = obj.get("tokens_per_s") or 0.0  # the agent's own decode rate
    err = proc.stderr.read() if proc.stderr else ""
    # The start's phases, from the HYBRID_AGENT_STARTUP_TRACE lines (a tree without the trace has none).
    out["phases"] = {}
    for line in err.splitlines():
        if line.startswith(TRACE_PREFIX) and len(parts := line[len(TRACE_PREFIX) :].split()) == 2:
            out["phases"][parts[0]] = float(parts[1]) - spawned
    if proc.wait() != 0 or "first_token_s" not in out:
        raise SystemExit(f"{tree['name']}: {' '.join(args)} failed (exit {proc.returncode}): {err[-500:]}")
    gen = out["result_s"] - out["first_token_s"]
    out["decode_tok_s"] = (out["output_tokens"] - 1) / gen if out["output_tokens"] > 1 and gen > 0 else 0.0
    return out


def help_seconds(tree: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hybrid_agent", "run", "--help"], env=tree["env"], check=True,
                   capture_output=True, cwd=tree["workspace"])  # fmt: skip
    return time.perf_counter() - t0


def make_tree(name: str, site: str | None, scratch: Path) -> dict[str, Any]:
    home = scratch / name
    for sub in ("workspace", "config", "cache"):
        (home / sub).mkdir(parents=True)
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    env["HYBRID_AGENT_STARTUP_TRACE"] = "1"
    env |= {"HYBRID_AGENT_CONFIG_DIR": str(home / "config"), "HYBRID_AGENT_CACHE_DIR": str(home / "cache")}
    if site is not None:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else site
    return {"name": name, "site": site, "env": env, "workspace": str(home / "workspace"),
            "db": str(home / "sessions.db")}  # fmt: skip


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def median_phase(rows: list[dict[str, Any]], phase: str) -> float:
    """The median offset of a trace phase from the spawn, over the runs that marked it."""
    return statistics.median(r["phases"][phase] for r in rows if phase in r["phases"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="NAME=SITE, repeatable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shape", default="default", help="default (packaged), olmo7b, olmo-1b, olmo-tiny")
    p.add_argument("--model", default=None, help="a model folder instead of --shape's")
    p.add_argument("--keep-model", default=None, help="write --shape's random checkpoint here, and keep it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", default="hello")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    p.add_argument("--out", default=None, help="JSON file to write")
    a = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cold-start-"))
    try:
        model = a.model
        if model is None and a.shape != "default":
            t = time.perf_counter()
            model = str(write_random_checkpoint(Path(a.keep_model or scratch / "model"), a.shape))
            print(f"wrote {a.shape} checkpoint in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        trees = [make_tree(*(t.split("=", 1)), scratch) for t in a.tree] or [make_tree("this", None, scratch)]
        common = ["run", "--output-format", "stream-json", "--include-partial-messages", "--device", a.device]
        common += ["--max-new-tokens", str(a.max_new_tokens), *(["--model", model] if model else [])]
        for tree in trees:
            tree["first_start"] = timed_run(tree, [*common, "--db", tree["db"], a.prompt], a.timeout)
            tree["help_s"], tree["new"], tree["resume"] = [], [], []
        for r in range(a.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                tree["help_s"].append(help_seconds(tree))
                new = timed_run(tree, [*common, "--db", tree["db"], a.prompt], a.timeout)
                resume = ["--resume", new["session_id"], a.prompt]
                tree["new"].append(new)
                tree["resume"].append(timed_run(tree, [*common, "--db", tree["db"], *resume], a.timeout))
                print(f"round {r} {tree['name']}: new {new['first_token_s']:.2f} s, resume "
                      f"{tree['resume'][-1]['first_token_s']:.2f} s", file=sys.stderr)  # fmt: skip
        report: dict[str, Any] = {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "shape": a.shape, "model": a.model, "device": a.device, "rounds": a.rounds, "trees": {},
        }  # fmt: skip
        folder = Path(model) if model else ROOT / "model" / "default"
        weight_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
        report["weight_bytes"] = weight_bytes
        for tree in trees:
            summary = {"site": tree["site"], "first_start": tree["first_start"],
                       "help_s_median": statistics.median(tree["help_s"])}  # fmt: skip
            for kind in ("new", "resume"):
                rows = tree[kind]
                keys = ("init_s", "first_token_s", "result_s", "decode_tok_s", "agent_tok_s", "output_tokens")
                summary[kind] = {k: median(rows, k) for k in keys}
                summary[kind]["first_token_s_all"] = [round(x["first_token_s"], 3) for x in rows]
                summary[kind]["init_s_all"] = [round(x["init_s"], 3) for x in rows]
                phases = sorted({p for x in rows for p in x["phases"]}, key=lambda p: median_phase(rows, p))
                summary[kind]["phases_median_s"] = {p: round(median_phase(rows, p), 3) for p in phases}
                if weight_bytes and {"device-ready", "weights-read"} <= set(phases):
                    # The load's rate: skeleton, allocation, reads and copies, from the device's readiness.
                    took = [x["phases"]["weights-read"] - x["phases"]["device-ready"] for x in rows
                            if {"device-ready", "weights-read"} <= set(x["phases"])]  # fmt: skip
                    summary[kind]["load_gb_s_median"] = round(weight_bytes / 1e9 / statistics.median(took), 2)
            report["trees"][tree["name"]] = summary
        text = json.dumps(report, indent=1)
        print(text)
        if a.out:
            Path(a.out).write_text(text + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
