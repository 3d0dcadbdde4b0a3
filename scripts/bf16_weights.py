"""Cast safetensors weight files to bf16 in place, for the trip back from the GPU machine.

The returned-file size limit makes fp32 weights awkward to bring back; the loader casts bf16 back to
fp32 on the CPU. Usage: python3 scripts/bf16_weights.py FILE [FILE ...]
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file


def to_bf16(path: str) -> None:
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(path).items()}, path, metadata={"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 scripts/bf16_weights.py FILE [FILE ...]")
    for p in sys.argv[1:]:
        to_bf16(p)
