"""Peak host memory while loading a ~300 MB checkpoint, measured in fresh processes (VmHWM).

Ours must stay under 1.2x the model's bytes. The control is the same empty model filled through
safetensors' memory-mapped `safe_open`: its touched pages stay resident until the shard is closed, so
it peaks near 2x; if the measurement could not tell the two apart, it would not be measuring anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def peak(mode: str, folder: Path) -> float:
    """The resident memory a load added at its peak, as a multiple of the loaded model's bytes."""
    out = subprocess.run(
        [sys.executable, str(HERE / "ckpt_peak_rss.py"), mode, str(folder)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak_kb"] - r["base_kb"]) * 1024 / r["model_bytes"]


@pytest.mark.slow
def test_peak_memory_while_loading_stays_near_the_model_size(tmp_path, tokenizer_files):
    cfg = transformers.Mamba2Config(
        vocab_size=32000, hidden_size=768, num_heads=24, head_dim=64, state_size=64, n_groups=1,
        num_hidden_layers=8, chunk_size=64, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device("meta"):
        hf = transformers.Mamba2ForCausalLM(cfg)
    hf = hf.to_empty(device="cpu")
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()  # the values do not matter here, only the bytes
    hf.save_pretrained(tmp_path)
    tokenizer_files(tmp_path)
    size = sum(p.nbytes for p in hf.parameters())
    assert 250e6 < size < 400e6
    del hf

    ours = peak("ours", tmp_path)
    assert ours <= 1.2, f"load_model peaked at {ours:.2f}x the model's bytes"
    control = peak("safe_open", tmp_path)
    assert control > 1.6, f"the memory-mapped control peaked at only {control:.2f}x: the measurement is off"
