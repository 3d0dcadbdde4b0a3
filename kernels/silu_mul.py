"""`silu_mul(gu)`: gu (B, 2F) = [gate | up] -> silu(gate) * up (B, F), rounded like `F.silu(gate) * up`
(silu rounded to the dtype, then the product): a SwiGLU MLP's activation in one launch for the decode
engine (model/decode/). `silu_mul_ref` is the definition; Triton on CUDA (kernels/triton_silu_mul.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton


def silu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    if use_triton(gu):
        from hybrid_agent.kernels.triton_silu_mul import silu_mul_triton

        return silu_mul_triton(gu)
    return silu_mul_ref(gu)
