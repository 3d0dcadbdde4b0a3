"""Opening a store and loading one large snapshot, with the open's file check (`PRAGMA quick_check`,
memory/open_check.py) waited for first (what every open did before) or running beside the load.

    .venv/bin/python bench/open_load.py [--gb 2] [--repeats 4] [--db FILE] [--out FILE]

One session whose snapshot holds `--gb` GB of random float32 cache pages, written once into an SQLite
file (kept at `--db` for later runs). Each repeat, alternating: `Store(path)`, then either
`store.refusal` (waits for the check's verdict) and `load_snapshot`, or `load_snapshot` at once; then
`close` (which interrupts a check still running). Warm page cache; medians. Also `quick_check` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.memory import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--db", type=Path, default=Path("/tmp/hybrid-agent-open-load.db"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.db.exists():
        with Store(args.db) as store:
            sid = store.create_session("open_load", "/tmp", "fp").id
            n = int(args.gb * 1e9 / 4 / 8)
            pages = [(i, i + 1, {"layers.0.k": torch.randn(n)}) for i in range(8)]
            store.save_turn(sid, 1, events=[], recurrent={"s": torch.zeros(4)}, pages=pages, n_tokens=8)
    res: dict[str, Any] = {
        "what": " ".join(__doc__.split("\n\n")[0].split()),
        "file_bytes": args.db.stat().st_size,
    }
    res["load_avg_start"] = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"check_first": [], "beside": []}
    for _ in range(args.repeats):
        for name in runs:
            t0 = time.perf_counter()
            store = Store(args.db)
            if name == "check_first":
                assert store.refusal is None
            t1 = time.perf_counter()
            snap = store.load_snapshot(store.list_sessions()[0].id)
            t2 = time.perf_counter()
            store.close()
            t3 = time.perf_counter()
            runs[name].append({"open_s": t1 - t0, "load_s": t2 - t1, "close_s": t3 - t2, "total_s": t3 - t0})
            del snap
    for name, rs in runs.items():
        for key in rs[0]:
            res[f"{name}_{key.removesuffix('_s')}_median_s"] = statistics.median(r[key] for r in rs)
    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    t = time.perf_counter()
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    res["quick_check_s"] = time.perf_counter() - t
    conn.close()
    res["runs"], res["load_avg_end"] = runs, os.getloadavg()
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
