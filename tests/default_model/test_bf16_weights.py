"""scripts/bf16_weights.py: what the device scripts use to shrink weights for the trip back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bf16_weights.py"


def test_casts_every_tensor_in_place(tmp_path: Path) -> None:
    w = {"a.weight": torch.randn(5, 7), "b.bias": torch.randn(3)}
    paths = [tmp_path / "one.safetensors", tmp_path / "two.safetensors"]
    for p in paths:
        save_file(w, str(p))
    subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], check=True)
    for p in paths:
        got = load_file(str(p))
        assert got.keys() == w.keys()
        for k, v in w.items():
            assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16))


def test_no_file_is_an_error() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode != 0 and "usage" in out.stderr
