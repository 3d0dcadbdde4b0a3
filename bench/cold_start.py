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

Every start records what the fingerprint cache did (`fingerprint_cache`): "stored" (the start hashed
the weights and stored their fingerprint: a first start of the tree, `first_start` true, never in a
median), "hit" (read from the cache) or "none" (the tree keeps no cache, so each of its starts hashes:
a tree from before the cache). The JSON (`--out`) is rewritten after every start, with each start's
row and phases (`starts`) and the medians of the rounds every tree finished (`rounds_done`;
`complete` once the run ended by itself), so a run cut by a time limit keeps what it measured.
`--budget S` starts no round that the slowest round so far says would end past S seconds from the
script's start: the run ends by itself, its JSON complete, inside a step's time limit.

    python bench/cold_start.py --tree base=/tmp/site-base --tree new=/tmp/site-new --rounds 5 \
        --out bench/results/cold_start_cpu.json
    # On a GPU machine: an OLMo Hybrid 7B-shaped random bf16 checkpoint (13 GB) written to a temp folder
    python bench/cold_start.py --shape olmo7b --device cuda --rounds 3 --out cold_start_h100.json

`--shape default` uses the packaged default model (or `--model DIR`); `--shape olmo-tiny` is a small
random checkpoint of the same family, to check the script on a CPU; `--shape olmo-1b` a 1.3 GB one, a
weights' read that takes a while on a CPU. `--keep-model DIR` writes the random checkpoint there and
keeps it (a later run passes it as `--model DIR`).

cold_start_default_cpu_s8.json: the packaged model on the CPU, a3de715 against a tree whose `run` is
the same (its changes are in serve, acp and the UI): the spread of two equal trees.
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
    cached = fingerprint_file(tree)
    try:
        for line in proc.stdout:
            now = time.perf_counter() - t0
            if now > timeout:
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
    except BaseException:  # a timeout, Ctrl-C, or the step's SIGTERM (main): no run is left behind
        proc.kill()
        proc.wait()
        raise
    out |= cache_outcome(tree, cached)  # a start that hashed the weights: not in a median
    out["phases"] = trace_phases(err, spawned)
    if proc.wait() != 0 or "first_token_s" not in out:
        raise SystemExit(f"{tree['name']}: {' '.join(args)} failed (exit {proc.returncode}): {err[-500:]}")
    gen = out["result_s"] - out["first_token_s"]
    out["decode_tok_s"] = (out["output_tokens"] - 1) / gen if out["output_tokens"] > 1 and gen > 0 else 0.0
    return out


def fingerprint_file(tree: dict[str, Any]) -> bytes | None:
    """The tree's fingerprint cache file (model/checkpoints/fingerprint_cache.py), None when absent: a
    start that changes it hashed the weights and stored their fingerprint."""
    try:
        return (Path(tree["env"]["HYBRID_AGENT_CACHE_DIR"]) / "fingerprints.json").read_bytes()
    except OSError:
        return None


def settle_checkpoint(folder: Path) -> None:
    """Wait until the checkpoint's files are older than the fingerprint cache's settling time (its
    SETTLE_NS, 2 s): a start right after they were written hashes them without storing the result,
    so the warm-up run would not spare the next start the hashing."""
    newest = max((f.stat().st_mtime for f in folder.iterdir() if f.is_file()), default=0.0)
    time.sleep(max(0.0, newest + 2.5 - time.time()))


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


def counted(tree: dict[str, Any], kind: str, rounds: int) -> list[dict[str, Any]]:
    """The `kind` ("new" or "resume") starts of `tree` that go into its medians: those of the first
    `rounds` rounds (the ones every tree finished), less any that hashed the weights."""
    return [r for r in tree[kind] if r["round"] < rounds and not r["first_start"]]


def summarize(rows: list[dict[str, Any]], weight_bytes: int) -> dict[str, Any]:
    """The medians of `rows` (timed starts of one kind): milestones, phases and the load's rate."""
    summary: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return summary
    keys = ("init_s", "first_token_s", "result_s", "decode_tok_s", "agent_tok_s", "output_tokens")
    summary |= {k: median(rows, k) for k in keys}
    summary["first_token_s_all"] = [round(x["first_token_s"], 3) for x in rows]
    summary["init_s_all"] = [round(x["init_s"], 3) for x in rows]
    phases = sorted({p for x in rows for p in x["phases"]}, key=lambda p: median_phase(rows, p))
    summary["phases_median_s"] = {p: round(median_phase(rows, p), 3) for p in phases}
    if weight_bytes and {"device-ready", "weights-read"} <= set(phases):
        # The load's rate: skeleton, allocation, reads and copies, from the device's readiness.
        took = [x["phases"]["weights-read"] - x["phases"]["device-ready"] for x in rows
                if {"device-ready", "weights-read"} <= set(x["phases"])]  # fmt: skip
        summary["load_gb_s_median"] = round(weight_bytes / 1e9 / statistics.median(took), 2)
    return summary


def start_row(run: dict[str, Any]) -> dict[str, Any]:
    """One start as the JSON lists it: its milestones, its phases and what the fingerprint cache did."""
    keep = ("round", "kind", "init_s", "first_token_s", "result_s", "output_tokens", "fingerprint_cache")
    row = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items() if k in keep}
    return row | {
        "first_start": run["first_start"],
        "phases": {p: round(t, 3) for p, t in run["phases"].items()},
    }


def report(
    head: dict[str, Any], trees: list[dict[str, Any]], weight_bytes: int, complete: bool
) -> dict[str, Any]:
    """The JSON of the run so far: the medians over the rounds every tree finished, every start's row."""
    done = min((len(t["resume"]) for t in trees), default=0)
    out = head | {"complete": complete, "rounds_done": done, "weight_bytes": weight_bytes, "trees": {}}
    for tree in trees:
        summary: dict[str, Any] = {"site": tree["site"]}
        if "first_start" in tree:
            summary["first_start"] = start_row(tree["first_start"])
        summary["help_s_median"] = statistics.median(tree["help_s"][:done]) if done else None
        for kind in ("new", "resume"):
            summary[kind] = summarize(counted(tree, kind, done), weight_bytes)
        runs = sorted(tree["new"] + tree["resume"], key=lambda r: (r["round"], r["kind"] == "resume"))
        summary["starts"] = [start_row(r) for r in runs]
        out["trees"][tree["name"]] = summary
    return out


def write_json(path: str | None, data: dict[str, Any]) -> None:
    """`data` to `path` through a temporary file renamed over it: a kill mid-write leaves the last one."""
    if path:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


def median_phase(rows: list[dict[str, Any]], phase: str) -> float:
    """The median offset of a trace phase from the spawn, over the runs that marked it."""
    return statistics.median(r["phases"][phase] for r in rows if phase in r["phases"])


# ---- what bench/serve_start.py and bench/acp_start.py use as well ------------------------------------------
def trace_phases(stderr: str, spawned: float) -> dict[str, float]:
    """The start's phases from its HYBRID_AGENT_STARTUP_TRACE lines, seconds from `spawned` (wall clock);
    a tree without the trace has none."""
    phases = {}
    for line in stderr.splitlines():
        if line.startswith(TRACE_PREFIX) and len(parts := line[len(TRACE_PREFIX) :].split()) == 2:
            phases[parts[0]] = float(parts[1]) - spawned
    return phases


def cache_outcome(tree: dict[str, Any], cached: bytes | None) -> dict[str, Any]:
    """What the fingerprint cache did in a start (`cached`: its file before): a start that stored it
    hashed the weights, so it is a first start and stays out of the medians."""
    after = fingerprint_file(tree)
    outcome = "none" if after is None else "hit" if after == cached else "stored"
    return {"fingerprint_cache": outcome, "first_start": outcome == "stored"}


def start_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every start benchmark takes: trees, rounds, the model, the device, budget, output."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="NAME=SITE, repeatable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shape", default="default", help="default (packaged), olmo7b, olmo-1b, olmo-tiny")
    p.add_argument("--model", default=None, help="a model folder instead of --shape's")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds from the start: no round begins that would end past it",
    )
    p.add_argument("--out", default=None, help="JSON file to write (rewritten after every start)")
    return p


def parse_start_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """`p`'s arguments, `start_parser`'s checked. A step's time limit (scripts/device_bench_serve_start.sh)
    sends SIGTERM: from here on it unwinds, so the run in flight is killed and the scratch folder
    removed; the JSON already holds every finished start."""
    a = p.parse_args()
    if a.rounds < 1 or (a.budget is not None and not a.budget > 0):
        p.error("--rounds takes a whole number >= 1 and --budget a number of seconds > 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return a


def run_header(a: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The JSON's head: when, the command, the machine and the run's settings."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "shape": a.shape, "model": a.model, "device": a.device, "rounds": a.rounds, **extra,
    }  # fmt: skip


def run_rounds(a: argparse.Namespace, began: float, trees: list[dict[str, Any]], one: Any) -> None:
    """`one(tree, r)` for every tree in each of `a.rounds` rounds, their order alternating between
    rounds; a round the slowest so far says would end past `a.budget` seconds from `began` is not begun."""
    slowest = 0.0
    for r in range(a.rounds):
        if a.budget is not None and time.perf_counter() - began + slowest > a.budget:
            print(f"round {r}: not started, it would end past --budget {a.budget:g} s", file=sys.stderr)
            return
        t_round = time.perf_counter()
        for tree in trees if r % 2 == 0 else trees[::-1]:
            one(tree, r)
        slowest = max(slowest, time.perf_counter() - t_round)


def model_for(a: argparse.Namespace, scratch: Path) -> str | None:
    """`--model`, or `--shape`'s random checkpoint written under `scratch` (None: the packaged
    default), settled so the first start can store its fingerprint."""
    model = a.model
    if model is None and a.shape != "default":
        model = str(write_random_checkpoint(scratch / "model", a.shape))
    if model:
        settle_checkpoint(Path(model))
    return model


def run_starts(
    a: argparse.Namespace, began: float, scratch: Path, head: dict[str, Any], key: str, summarize: Any,
    start: Any, describe: Any,
) -> None:  # fmt: skip
    """A start benchmark whose one start per tree and round is `start(tree)` (a row): an untimed first
    start of each tree, then the rounds (`run_rounds`), the JSON after every start (`starts_report`
    under `key`), `describe(row)` on stderr, the whole JSON on stdout at the end."""
    trees = [make_tree(*(t.split("=", 1)), scratch) for t in a.tree] or [make_tree("this", None, scratch)]
    for tree in trees:
        tree["starts"] = []
    for tree in trees:
        tree["first_start"] = start(tree)
        write_json(a.out, starts_report(head, trees, False, key, summarize))

    def one_round(tree: dict[str, Any], r: int) -> None:
        row = start(tree) | {"round": r}
        tree["starts"].append(row)
        write_json(a.out, starts_report(head, trees, False, key, summarize))
        print(f"round {r} {tree['name']}: {describe(row)}", file=sys.stderr)

    run_rounds(a, began, trees, one_round)
    data = starts_report(head, trees, True, key, summarize)
    write_json(a.out, data)
    print(json.dumps(data, indent=1))


def summarize_starts(rows: list[dict[str, Any]], keys: tuple[str, ...], listed: str) -> dict[str, Any]:
    """Medians of `keys` over the starts that have them, every start's `listed`, the phases' medians."""
    summary: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return summary
    for key in keys:
        summary[f"{key}_median"] = round(statistics.median(r[key] for r in rows if key in r), 3)
    summary[f"{listed}_all"] = [round(r[listed], 3) for r in rows]
    phases = sorted({p for r in rows for p in r["phases"]}, key=lambda p: median_phase(rows, p))
    summary["phases_median_s"] = {p: round(median_phase(rows, p), 3) for p in phases}
    return summary


def starts_report(
    head: dict[str, Any], trees: list[dict[str, Any]], complete: bool, key: str, summarize: Any
) -> dict[str, Any]:
    """The JSON of a run whose trees list `starts`: `summarize` over the rounds every tree finished
    (first starts left out) under `key`, and every start's row."""
    done = min((len(t["starts"]) for t in trees), default=0)
    out = head | {"complete": complete, "rounds_done": done, "trees": {}}
    for tree in trees:
        rows = [r for r in tree["starts"][:done] if not r["first_start"]]
        starts = [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in tree["starts"]
        ]
        out["trees"][tree["name"]] = {"site": tree["site"], "first_start": tree.get("first_start"),
                                      key: summarize(rows), "starts": starts}  # fmt: skip
    return out


def main() -> None:
    began = time.perf_counter()
    p = start_parser(__doc__)
    p.add_argument("--keep-model", default=None, help="write --shape's random checkpoint here, and keep it")
    p.add_argument("--prompt", default="hello")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    a = parse_start_args(p)
    scratch = Path(tempfile.mkdtemp(prefix="cold-start-"))
    try:
        model = a.model
        if model is None and a.shape != "default":
            t = time.perf_counter()
            model = str(write_random_checkpoint(Path(a.keep_model or scratch / "model"), a.shape))
            print(f"wrote {a.shape} checkpoint in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        folder = Path(model) if model else ROOT / "model" / "default"
        if folder.is_dir():
            settle_checkpoint(folder)
        weight_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
        head = run_header(a)
        trees = [make_tree(*(t.split("=", 1)), scratch) for t in a.tree] or [make_tree("this", None, scratch)]
        for tree in trees:
            tree["help_s"], tree["new"], tree["resume"] = [], [], []
        common = ["run", "--output-format", "stream-json", "--include-partial-messages", "--device", a.device]
        common += ["--max-new-tokens", str(a.max_new_tokens), *(["--model", model] if model else [])]

        def save(complete: bool = False) -> dict[str, Any]:
            data = report(head, trees, weight_bytes, complete)
            write_json(a.out, data)
            return data

        for tree in trees:
            first = timed_run(tree, [*common, "--db", tree["db"], a.prompt], a.timeout)
            tree["first_start"] = first | {"round": -1, "kind": "new"}
            save()

        def one_round(tree: dict[str, Any], r: int) -> None:
            tree["help_s"].append(help_seconds(tree))
            new = timed_run(tree, [*common, "--db", tree["db"], a.prompt], a.timeout)
            tree["new"].append(new | {"round": r, "kind": "new"})
            save()
            resume = ["--resume", new["session_id"], a.prompt]
            back = timed_run(tree, [*common, "--db", tree["db"], *resume], a.timeout)
            tree["resume"].append(back | {"round": r, "kind": "resume"})
            save()
            hashed = " (hashed the weights: not in the medians)" if new["first_start"] else ""
            print(f"round {r} {tree['name']}: new {new['first_token_s']:.2f} s{hashed}, resume "
                  f"{back['first_token_s']:.2f} s", file=sys.stderr)  # fmt: skip

        run_rounds(a, began, trees, one_round)
        print(json.dumps(save(complete=True), indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
