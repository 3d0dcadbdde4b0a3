"""Triton version of kernels/silu_mul.py (same contract; see that module's doc)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.errors import KernelInputError


@triton.jit
def _silu_mul_kernel(gu_ptr, o_ptr, F, BF: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BF + tl.arange(0, BF)
    m = offs < F
    dt = o_ptr.dtype.element_ty
    gate = tl.load(gu_ptr + row * 2 * F + offs, mask=m, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * 2 * F + F + offs, mask=m, other=0.0).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(dt).to(tl.float32)  # F.silu rounds to the dtype first
    tl.store(o_ptr + row * F + offs, (act * up).to(dt), mask=m)


def silu_mul_triton(gu: torch.Tensor) -> torch.Tensor:
    if gu.shape[-1] % 2 or not gu.is_contiguous():
        raise KernelInputError(f"silu_mul: contiguous (..., 2F) input, got {tuple(gu.shape)}")
    F2 = gu.shape[-1] // 2
    out = torch.empty(*gu.shape[:-1], F2, device=gu.device, dtype=gu.dtype)
    BF = 1024
    _silu_mul_kernel[(gu.numel() // (2 * F2), triton.cdiv(F2, BF))](gu, out, F2, BF=BF, num_warps=4)
    return out
