"""The Triton kernels of kernels/mla_decode.py (which launches them; its docstring says what they do).

A module of their own so that importing the model does not import Triton: `mla_decode` imports this
only when it runs its Triton path.
"""

from __future__ import annotations

import triton
import triton.language as tl
from hybrid_agent.kernels.triton_common import dot as _mm


@triton.jit
def _mla_partial_kernel(
    ql_ptr, qr_ptr, lat_ptr, rope_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr,
    H, C, R,
    sqlb, sqlh, sqrb, sqrh, slb, sln, srb, srn,
    NSPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BH: tl.constexpr, BC: tl.constexpr,
    BR: tl.constexpr, IEEE: tl.constexpr, PER_ROW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    split = tl.program_id(1)
    if PER_ROW:  # this row's own length
        L = tl.load(pos_ptr + b) + 1
    else:
        L = tl.load(pos_ptr) + 1
    per = tl.cdiv(tl.cdiv(L, NSPLIT), BLOCK_N) * BLOCK_N  # keys per split, whole blocks
    lo = split * per
    hi = tl.minimum(lo + per, L)
    offs_h = tl.arange(0, BH)
    offs_c = tl.arange(0, BC)
    offs_r = tl.arange(0, BR)
    mh, mc, mr = offs_h < H, offs_c < C, offs_r < R
    ql = tl.load(
        ql_ptr + b * sqlb + offs_h[:, None] * sqlh + offs_c[None, :],
        mask=mh[:, None] & mc[None, :],
        other=0.0,
    )  # (BH, BC)
    qr = tl.load(
        qr_ptr + b * sqrb + offs_h[:, None] * sqrh + offs_r[None, :],
        mask=mh[:, None] & mr[None, :],
        other=0.0,
    )  # (BH, BR)
    m_i = tl.full((BH,), -1.0e30, tl.float32)
    l_i = tl.zeros((BH,), tl.float32)
    acc = tl.zeros((BH, BC), tl.float32)
    lat_base = lat_ptr + b.to(tl.int64) * slb
    rope_base = rope_ptr + b.to(tl.int64) * srb
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mn = offs_n < hi
        c = tl.load(
            lat_base + offs_n[:, None].to(tl.int64) * sln + offs_c[None, :],
            mask=mn[:, None] & mc[None, :],
            other=0.0,
        )  # (BLOCK_N, BC)
        r = tl.load(
            rope_base + offs_n[:, None].to(tl.int64) * srn + offs_r[None, :],
            mask=mn[:, None] & mr[None, :],
            other=0.0,
        )  # (BLOCK_N, BR)
        s = _mm(ql, tl.trans(c), IEEE) + _mm(qr, tl.trans(r), IEEE)  # (BH, BLOCK_N) natural-log units
        s = tl.where(mn[None, :], s * 1.4426950408889634, -1.0e30)  # log2 units for exp2
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _mm(p.to(c.dtype), c, IEEE)
        m_i = m_new
    row = (b * NSPLIT + split) * BH + offs_h  # partials padded to BH rows
    tl.store(m_ptr + row, m_i)
    tl.store(l_ptr + row, l_i)
    tl.store(acc_ptr + row[:, None] * BC + offs_c[None, :], acc)


@triton.jit
def _mla_combine_kernel(
    m_ptr, l_ptr, acc_ptr, pos_ptr, o_ptr, C, sob, soh,
    NSPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BH: tl.constexpr, BC: tl.constexpr, BCB: tl.constexpr,
    PER_ROW: tl.constexpr,
):  # fmt: skip
    # grid (B, H, C / BCB): a (NSPLIT, BCB) tile of partial sums per program, no register spill
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_c = tl.program_id(2) * BCB + tl.arange(0, BCB)
    mc = offs_c < C
    if PER_ROW:
        L = tl.load(pos_ptr + b) + 1
    else:
        L = tl.load(pos_ptr) + 1
    per = tl.cdiv(tl.cdiv(L, NSPLIT), BLOCK_N) * BLOCK_N
    used = tl.cdiv(L, per)  # splits that hold keys: only their partials are read
    offs_s = tl.arange(0, NSPLIT)
    ms = offs_s < used
    row = (b * NSPLIT + offs_s) * BH + h  # (NSPLIT,)
    m = tl.load(m_ptr + row, mask=ms, other=-1.0e30)
    denom = tl.load(l_ptr + row, mask=ms, other=0.0)
    w = tl.where(ms, tl.exp2(m - tl.max(m, axis=0)), 0.0)
    acc = tl.load(acc_ptr + row[:, None] * BC + offs_c[None, :], mask=ms[:, None] & mc[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(denom * w, axis=0)
    tl.store(o_ptr + b * sob + h * soh + offs_c, out.to(o_ptr.dtype.element_ty), mask=mc)
