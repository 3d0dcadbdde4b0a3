"""Triton RMSNorm and gated RMSNorm, same contract as `hybrid_agent.kernels.rms_norm` (see its doc for the two
gate orders). One program per (row, group): the group is loaded once, reduced in fp32, written once.
Rows may be read at a row stride wider than their channels (a column block of a stacked projection
needs no packed copy first), or as heads within such rows (rows (n, h, d): heads at one stride, tokens
at another, as Gated DeltaNet's output gate, a column block of its stacked input projection, normed
per head); the output is packed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_rms_gate, check_rms_weight, rms_group_size


@triton.jit
def _rms_norm_kernel(
    x_ptr, z_ptr, w_ptr, y_ptr,
    D, GS, eps, SX, SX1, XH, SZ, SZ1, ZH,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    offs = grp * GS + tl.arange(0, BS)
    m = tl.arange(0, BS) < GS
    x = tl.load(x_ptr + (row // XH) * SX + (row % XH) * SX1 + offs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + (row // ZH) * SZ + (row % ZH) * SZ1 + offs, mask=m, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            x = x * gate
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / GS + eps)
    y = x * rstd * w
    if HAS_Z:  # noqa: SIM102 (two constexpr branches read more plainly to Triton's frontend)
        if NORM_BEFORE_GATE:
            y = y * gate
    tl.store(y_ptr + row * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def gated_rms_norm_triton(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    d = x.shape[-1]
    check_rms_weight(x, weight)
    gs = rms_group_size(d, group_size)
    check_rms_gate(x, z)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = y.numel() // d
    if rows == 0:
        return y
    xr, xh, sx, sx1 = row_layout(x, d)
    zr, zh, sz, sz1 = row_layout(z, d) if z is not None else (xr, xh, sx, sx1)
    _rms_norm_kernel[(rows, d // gs)](
        xr, zr, weight.contiguous(), y, d, gs, float(eps), sx, sx1, xh, sz, sz1, zh,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, BS=triton.next_power_of_2(gs),
        num_warps=4 if gs <= 4096 else 8,
    )  # fmt: skip
    return y


def row_layout(t: torch.Tensor, d: int) -> tuple[torch.Tensor, int, int, int]:
    """Where row r of t's (rows, d) rows lies: (base, h, s, s1), row r at (r // h) * s + (r % h) * s1
    from base, channels at unit stride. One row stride (h = 1) where t's strides allow it (a column
    block of a wider projection, as attention's q and k before QK-norm); else heads of d channels at
    one stride inside rows at another (t (..., h, d), a column block of a wider projection cut in
    heads); else a packed copy."""
    if t.stride(-1) == 1:
        try:
            v = t.view(-1, d)
        except RuntimeError:  # rows at irregular strides
            v = None
        if v is not None and (v.shape[0] <= 1 or v.stride(0) >= d):
            return v, 1, v.stride(0), 0
        if t.dim() >= 3:
            h = t.shape[-2]
            try:
                w = t.view(-1, h, d)
            except RuntimeError:
                w = None
            if w is not None and w.stride(1) >= d and (w.shape[0] <= 1 or w.stride(0) >= h * w.stride(1)):
                return w, h, w.stride(0), w.stride(1)
    c = t.contiguous().view(-1, d)
    return c, 1, d, 0
