"""Triton version of kernels/residual_rms_norm.py (same contract; see that module's doc)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.errors import KernelInputError


@triton.jit
def _residual_norm_kernel(
    x_ptr, y_ptr, wy_ptr, wo_ptr, o_ptr, D, eps,
    HAS_WY: tl.constexpr, HAS_WO: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BD)
    m = offs < D
    dt = x_ptr.dtype.element_ty
    y = tl.load(y_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_WY:  # post-norm: the sub-layer's output is normalised (and rounded) before the add
        w = tl.load(wy_ptr + offs, mask=m, other=0.0).to(tl.float32)
        y = (y * (1.0 / tl.sqrt(tl.sum(y * y, axis=0) / D + eps)) * w).to(dt).to(tl.float32)
    x = (tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32) + y).to(dt)
    tl.store(x_ptr + row * D + offs, x, mask=m)
    if HAS_WO:
        xf = x.to(tl.float32)
        w2 = tl.load(wo_ptr + offs, mask=m, other=0.0).to(tl.float32)
        out = xf * (1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)) * w2
        tl.store(o_ptr + row * D + offs, out.to(dt), mask=m)


def residual_rms_norm_triton(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if y.shape != x.shape or not x.is_contiguous() or not y.is_contiguous():
        raise KernelInputError(
            f"residual_rms_norm: contiguous x and y of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    D = x.shape[-1]
    out = torch.empty_like(x) if w_out is not None else None
    BD = triton.next_power_of_2(D)
    _residual_norm_kernel[(x.numel() // D,)](
        x, y, w_y if w_y is not None else x, w_out if w_out is not None else x, out if out is not None else x,
        D, float(eps), HAS_WY=w_y is not None, HAS_WO=w_out is not None, BD=BD,
        num_warps=8 if BD >= 2048 else 4,
    )  # fmt: skip
    return out
