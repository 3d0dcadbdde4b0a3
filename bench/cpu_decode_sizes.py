"""CPU decode speed and packaged size of candidate default-model shapes, with random weights.

    OMP_WAIT_POLICY=PASSIVE python bench/cpu_decode_sizes.py [--sizes 384x6,512x6,512x8,512x9]
        [--tokens 150] [--prompt-len 900] [--repeats 5] [--out bench/results/cpu_decode_sizes.json]

Each size `DxN` is model/training/train.py's hybrid (`build_config("hybrid", vocab, D, N)`, the
vocabulary of model/default's tokenizer), initialised at random (decode costs the same whatever the
weights), saved as the wheel would hold it (bf16 safetensors: scripts/bf16_weights.py) and loaded back
as the agent's engine loads it. Decode: a prefill of `--prompt-len` tokens (about the agent's first
turn), then `--tokens` greedy one-token steps on the agent's CPU path (bench/cpu_decode.py's
`child_decode`); the shipped model/default is timed in the same rounds (the sizes in turn, `--repeats`
rounds), so the ratio to it means something on a shared machine. Targets: <= 90 MB of weights,
>= 100 tok/s on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from hybrid_agent.model import HybridLM
from hybrid_agent.model.training.train import build_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cpu_decode import child_decode  # noqa: E402


def make_candidate(size: str, vocab: int, where: Path) -> dict[str, object]:
    d, n = (int(x) for x in size.split("x"))
    torch.manual_seed(0)
    model = HybridLM(build_config("hybrid", vocab, d, n))
    model.save_pretrained(where)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bf16_weights.py"), str(where / "model.safetensors")],
        check=True,
    )
    return {
        "d_model": d,
        "n_layers": n,
        "layer_types": model.config.layer_types,
        "params": model.num_parameters(),
        "weights_mb": round((where / "model.safetensors").stat().st_size / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="384x6,512x6,512x8,512x9")
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--prompt-len", type=int, default=900)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_decode_sizes.json")
    a = p.parse_args(argv)
    shipped = ROOT / "model" / "default"
    vocab = HybridLM.from_pretrained(shipped, device="cpu").config.vocab_size
    prompt = [10 + i % (vocab - 20) for i in range(a.prompt_len)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"shipped": shipped}
        info: dict[str, dict[str, object]] = {}
        for size in a.sizes.split(","):
            dirs[size] = Path(tmp) / size
            info[size] = make_candidate(size, vocab, dirs[size])
        models = {name: HybridLM.from_pretrained(d, device="cpu") for name, d in dirs.items()}
        for lm in models.values():
            child_decode(lm, prompt[:32], 8)  # warm-up, not timed
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(a.repeats):
            for name, lm in models.items():
                rates[name].append(child_decode(lm, prompt, a.tokens)["tok_s"])
    rows = {}
    for name in models:
        ratio = statistics.median(x / y for x, y in zip(rates[name], rates["shipped"], strict=True))
        rows[name] = {
            **info.get(name, {"params": models[name].num_parameters()}),
            "tok_s": rates[name],
            "median_tok_s": statistics.median(rates[name]),
            "ratio_to_shipped": round(ratio, 3),
        }
    result = {
        "benchmark": "cpu_decode_sizes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "tokens": a.tokens,
        "prompt_len": a.prompt_len,
        "repeats": a.repeats,
        "models": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: {x: v[x] for x in ("params", "median_tok_s", "ratio_to_shipped") if x in v}
                for k, v in rows.items()
            },
            indent=1,
        )
    )
    return result


if __name__ == "__main__":
    main()
