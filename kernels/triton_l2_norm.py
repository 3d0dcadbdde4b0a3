"""Triton version of kernels/l2_norm.py (same contract; see that module's doc). One program per block of
rows: each row loaded once, its sum of squares in fp32, the factor 1 / sqrt(sum + eps) with a correctly
rounded root and division, the product rounded once into x's dtype, written packed. Rows are read at
x's own strides (kernels/triton_rms_norm.py `row_layout`: one row stride, or heads inside rows)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.triton_rms_norm import row_layout


@triton.jit
def _l2_norm_kernel(
    x_ptr, y_ptr, R, D, XH, SX, SX1, eps,
    BR: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    offs = tl.arange(0, BD)
    m = (rows < R)[:, None] & (offs < D)[None, :]
    src = (rows // XH) * SX + (rows % XH) * SX1
    x = tl.load(x_ptr + src[:, None] + offs[None, :], mask=m, other=0.0).to(tl.float32)
    r = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(x * x, axis=1) + eps))  # (BR,)
    tl.store(y_ptr + rows[:, None] * D + offs[None, :], (x * r[:, None]).to(y_ptr.dtype.element_ty), mask=m)


def l2_norm_triton(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    d = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = y.numel() // d if d else 0
    if rows == 0:
        return y
    xr, xh, sx, sx1 = row_layout(x, d)
    BD = triton.next_power_of_2(d)
    BR = max(1, min(32, 4096 // BD))
    _l2_norm_kernel[(triton.cdiv(rows, BR),)](
        xr, y, rows, d, xh, sx, sx1, float(eps), BR=BR, BD=BD, num_warps=4,
    )  # fmt: skip
    return y
