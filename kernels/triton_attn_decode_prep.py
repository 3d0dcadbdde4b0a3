"""Triton version of kernels/attn_decode_prep.py (same contract; see that module's doc)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.errors import KernelInputError


@triton.jit
def _norm_rope(
    x_ptr, w_ptr, cos_ptr, sin_ptr, nh, Dh, eps,
    NORM: tl.constexpr, R: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """(nh, Dh) heads at x_ptr -> QK-norm (NORM 0 none, 1 over all heads, 2 per head) rounded to x's dtype,
    then rotate-half RoPE of the first R channels in fp32; returns the fp32 tile (BH, BD)."""
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BD)
    m = (offs_h < nh)[:, None] & (offs_d < Dh)[None, :]
    idx = offs_h[:, None] * Dh + offs_d[None, :]
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + idx, mask=m, other=0.0).to(tl.float32)
    if NORM == 1:  # one RMS over every head: weights per channel of the row
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / (nh * Dh) + eps)
        y = (x * rstd * tl.load(w_ptr + idx, mask=m, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
    elif NORM == 2:  # per head: weights per channel of a head
        rstd = (1.0 / tl.sqrt(tl.sum(x * x, axis=1) / Dh + eps))[:, None]  # (BH, 1)
        wd = tl.load(w_ptr + offs_d, mask=offs_d < Dh, other=0.0).to(tl.float32)
        y = (x * rstd * wd[None, :]).to(dt).to(tl.float32)
    else:
        y = x
    if R > 0:
        # the partner channel of rotate-half (d + R/2 or d - R/2), normalised the same way (same rstd,
        # same rounding), read again from memory (an L1 hit) rather than shuffled across threads
        in_r = offs_d < R
        lower = offs_d < R // 2
        pd = tl.where(lower, offs_d + R // 2, offs_d - R // 2)
        pidx = offs_h[:, None] * Dh + pd[None, :]
        pm = m & in_r[None, :]
        xp = tl.load(x_ptr + pidx, mask=pm, other=0.0).to(tl.float32)
        if NORM == 1:
            yp = (xp * rstd * tl.load(w_ptr + pidx, mask=pm, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
        elif NORM == 2:
            wp = tl.load(w_ptr + pd, mask=in_r, other=0.0).to(tl.float32)
            yp = (xp * rstd * wp[None, :]).to(dt).to(tl.float32)
        else:
            yp = xp
        rot = tl.where(lower[None, :], -yp, yp)
        c = tl.load(cos_ptr + offs_d, mask=in_r, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + offs_d, mask=in_r, other=0.0).to(tl.float32)
        y = tl.where(in_r[None, :], y * c[None, :] + rot * s[None, :], y)
    return y


@triton.jit
def _attn_prep_kernel(
    qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, pos_ptr, k_ptr, v_ptr, pbuf_ptr, q_ptr,
    s_row, H, Hkv, Dh, eps, skb, skh, skn, svb, svh, svn,
    NORM: tl.constexpr, R: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr, PER_ROW: tl.constexpr,
):  # fmt: skip
    # grid (B, 3): q, k (norm + RoPE; k into the cache) and v (into the cache) of one row each
    b = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    if PER_ROW:  # this row's own position, cos and sin
        pos = tl.load(pos_ptr + b)
        cos_ptr += b * R
        sin_ptr += b * R
    else:
        pos = tl.load(pos_ptr)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BD)
    row = qkv_ptr + b * s_row
    if part == 0:
        y = _norm_rope(row, qw_ptr, cos_ptr, sin_ptr, H, Dh, eps, NORM, R, BH, BD)
        m = (offs_h < H)[:, None] & (offs_d < Dh)[None, :]
        dst = q_ptr + b * H * Dh + offs_h[:, None] * Dh + offs_d[None, :]
        tl.store(dst, y.to(q_ptr.dtype.element_ty), mask=m)
    elif part == 1:
        y = _norm_rope(row + H * Dh, kw_ptr, cos_ptr, sin_ptr, Hkv, Dh, eps, NORM, R, BH, BD)
        m = (offs_h < Hkv)[:, None] & (offs_d < Dh)[None, :]
        # rounded to the activations' dtype first (the model's k), then to the cache's
        yk = y.to(qkv_ptr.dtype.element_ty).to(k_ptr.dtype.element_ty)
        tl.store(k_ptr + b * skb + offs_h[:, None] * skh + pos * skn + offs_d[None, :], yk, mask=m)
    else:
        m = (offs_h < Hkv)[:, None] & (offs_d < Dh)[None, :]
        v = tl.load(row + (H + Hkv) * Dh + offs_h[:, None] * Dh + offs_d[None, :], mask=m, other=0.0)
        tl.store(v_ptr + b * svb + offs_h[:, None] * svh + pos * svn + offs_d[None, :],
                 v.to(v_ptr.dtype.element_ty), mask=m)  # fmt: skip
        if PER_ROW or b == 0:  # slot p holds position p, whichever row wrote it
            tl.store(pbuf_ptr + pos, pos)


def attn_decode_prep_triton(
    qkv: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, pos: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
    pos_buf: torch.Tensor, *, H: int, Hkv: int, Dh: int, eps: float, qk_norm: str,
) -> torch.Tensor:  # fmt: skip
    # inputs as kernels.checks.check_attn_prep allows (the dispatcher checked them)
    R = 0 if cos is None else cos.shape[-1]
    norm = {"none": 0, "full": 1, "head": 2}[qk_norm]
    if qkv.stride(1) != 1 or k_buf.stride(3) != 1 or v_buf.stride(3) != 1 or pos_buf.stride(0) != 1:
        raise KernelInputError("attn_decode_prep_triton needs contiguous qkv rows and cache head dims")
    if R and (cos is None or sin is None or not cos.is_contiguous() or not sin.is_contiguous()):
        raise KernelInputError("attn_decode_prep_triton needs contiguous cos and sin")
    B = qkv.shape[0]
    q = torch.empty(B, H, Dh, device=qkv.device, dtype=qkv.dtype)
    BH, BD = triton.next_power_of_2(max(H, Hkv)), triton.next_power_of_2(Dh)
    _attn_prep_kernel[(B, 3)](
        qkv, q_w if q_w is not None else qkv, k_w if k_w is not None else qkv,
        cos if cos is not None else qkv, sin if sin is not None else qkv, pos, k_buf, v_buf, pos_buf, q,
        qkv.stride(0), H, Hkv, Dh, float(eps), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2),
        v_buf.stride(0), v_buf.stride(1), v_buf.stride(2),
        NORM=norm, R=R, BH=BH, BD=BD, PER_ROW=pos.numel() > 1, num_warps=8 if BH * BD >= 2048 else 4,
    )  # fmt: skip
    return q
