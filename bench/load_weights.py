"""Weight reading speed: our reader (model/checkpoints/shards.py) against safetensors.torch.load_file.

Writes a safetensors file of `--gb` GB (bf16 tensors of 64 MB and a few small ones, like a
checkpoint's) to a temp folder, reads it once to warm the page cache, then per round, in turn:
- `safetensors`: `load_file(path, device=DEVICE)`; on the CPU it maps the file and reads nothing, so
  each tensor is then copied into a preallocated one (what a loader filling its parameters does);
- `ours`: every tensor read into a preallocated tensor on DEVICE (`read_into` on the CPU, the pinned
  ring of `upload_into` on CUDA), with the default number of threads;
- `ours-1thread`: the same, reading on one thread.
GB/s = file bytes / seconds; the JSON has the median per mode and every round's number.

    python bench/load_weights.py [--gb 2] [--rounds 5] [--device cpu|cuda] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.model.checkpoints.shards import ShardSet
from safetensors.torch import load_file, save_file


def write_file(folder: Path, gb: float) -> Path:
    n_big = max(1, int(gb * 1024 / 64))
    g = torch.Generator().manual_seed(0)
    block = torch.randn(32 << 20, generator=g).to(torch.bfloat16)  # 64 MB
    ts = {f"layers.{i}.weight": block.clone() for i in range(n_big)}
    ts |= {f"layers.{i}.norm": torch.ones(4096, dtype=torch.bfloat16) for i in range(n_big)}
    path = folder / "model.safetensors"
    save_file(ts, str(path))
    return path


def ours(folder: Path, device: str, threads: int | None) -> None:
    s = ShardSet(folder, threads=threads)
    try:
        for e in s:
            out = torch.empty(e.shape, dtype=e.dtype, device=device)
            if out.device.type == "cuda":
                s.upload_into(e.name, out)
            else:
                s.read_into(e.name, out)
        s.sync()
    finally:
        s.close()


def safetensors_load(path: Path, device: str) -> None:
    loaded = load_file(str(path), device=device)
    if torch.device(device).type == "cpu":
        for t in loaded.values():
            torch.empty_like(t).copy_(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="load-weights-"))
    try:
        path = write_file(folder, a.gb)
        size = path.stat().st_size
        with path.open("rb") as f:  # the page cache, as on a warm start
            while f.read(64 << 20):
                pass

        def sync() -> None:
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()

        modes: dict[str, Any] = {
            "safetensors": lambda: safetensors_load(path, a.device),
            "ours": lambda: ours(folder, a.device, None),
            "ours-1thread": lambda: ours(folder, a.device, 1),
        }
        speeds: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(a.rounds):
            for name, fn in modes.items() if r % 2 == 0 else reversed(modes.items()):
                sync()
                t0 = time.perf_counter()
                out = fn()
                sync()
                speeds[name].append(size / (time.perf_counter() - t0) / 1e9)
                del out
        report = {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python bench/load_weights.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                   vars(a).items() if v is not None),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                        "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None},
            "file_bytes": size,
            "gb_per_s_median": {m: round(statistics.median(v), 3) for m, v in speeds.items()},
            "gb_per_s_all": {m: [round(x, 3) for x in v] for m, v in speeds.items()},
        }  # fmt: skip
        text = json.dumps(report, indent=1)
        print(text)
        if a.out:
            Path(a.out).write_text(text + "\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
