"""Triton chunked Kimi delta rule (KDA, forward), same contract as `chunk_kda_ref` (kernels/kda.py).

The chunked form of kernels/kda.py in chunks of 64 tokens (the result does not depend on the chunk
size, so the public op's `chunk_size` is a hint here, as for kernels/triton_gated_delta_rule.py).
Four launches:

1. `_kda_prep_kernel`, parallel over (chunk, batch*head, dk-block): gam, the cumulative log2-decay
   per key channel from the chunk's start (fp32, (b*h, chunks, 64, dk); tail rows past t repeat the
   last token's value, since padding decays nothing), and the decayed operands of step 4 in the input
   dtype: q exp(gam), k exp(gam) and k exp(gam_L - gam) (every exponent <= 0). Elementwise work on
   (64, dk) tiles inside the sequential kernel made it spill (sm_90 compile: 255 registers + 776 B).
2. `_kda_kkt_kernel`, parallel over (chunk, batch*head, 16-row block i): the blocks (i, j <= i) of
   A_ij = beta_i sum_c k_ic k_jc exp(gam_ic - gam_jc) (strictly lower) and of the decayed attention
   matrix [sum_c q_ic k_jc exp(gam_ic - gam_jc)] (diagonal included). The decay differs per channel,
   so it cannot be a factor outside one product. Off-diagonal blocks (j < i) split it around a
   reference point, gam at the last row of block i - 1, which lies between the two rows' values
   (gam never increases in time): (k_i exp(gam_i - ref)) . (k_j exp(ref - gam_j)), both factors
   <= 1, so one tensor-core product per block and nothing overflows however strong the decay. The
   diagonal blocks have no such point between every pair, so they form each pair's decay itself
   (a (16, 16, dk-slice) broadcast, every exponent <= 0), as fla's token-parallel diagonal does.
   The launch passes IEEE: the decayed operands are fp32, which tensor cores would cut to tf32,
   and 16x16 products are a small part of this kernel's time (its loads dominate).
3. `_gdr_solve_kernel` of triton_gdr_prepare.py: T = (I + A)^-1 (the system has the scalar gate's
   shape; only A's entries differ).
4. `_kda_fused_kernel`, one program per (batch*head, dv-block), sequential over chunks with the fp32
   state in registers: v_new = T diag(beta) (V - (K * exp(gam)) S), o = scale ((Q * exp(gam)) S +
   [qk] v_new), S <- diag(exp(gam_L)) S + (K * exp(gam_L - gam))^T v_new. Only o goes to memory.

Products are exact fp32 for fp32 inputs and on the CPU interpreter. For 16-bit inputs the decayed
q, k operands and the q.k matrix are rounded to the input dtype (fla's precision class), the state's
own products use 16-bit hi + lo pairs of S and v_new (as triton_gated_delta_rule.py's default), and
T (I + A)^-1 multiplies in tf32. A, T and gam are fp32.

The host prologue, the output buffers, the dv-block rule and the state's hi + lo product are the GDN
launch's (triton_gdr_prepare.py, triton_gated_delta_rule.py). The kernels stay their own: a decay per
channel cannot leave the key products, so kkt and the sequential pass differ from the scalar gate's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_delta_inputs
from hybrid_agent.kernels.triton_common import dot as _mm
from hybrid_agent.kernels.triton_gated_delta_rule import _state_dot
from hybrid_agent.kernels.triton_gdr_prepare import (
    CHUNK,
    _gdr_solve_kernel,
    chunk_operands,
    fused_bv,
    state_buffers,
)


@dataclass(frozen=True)
class KdaLaunch:
    """Launch parameters of `chunk_kda_triton`, as ints so a benchmark can pass overrides as JSON."""

    fu_bv: int = 32  # fused dv-block: at dk 128, bf16, 4 warps, 232 registers and no spill (sm_90
    # compile, Triton 3.9); 64 spills 120 B (64 B at 8 warps); 0: 32 when the grid fits one wave of
    # the GPU's SMs, else 64
    fu_warps: int = 4
    fu_stages: int = 2  # 3 needs 246 KB of shared memory at dk 128, dv-block 32: over an H100's 227
    # 16-bit inputs: k exp(gam) and k exp(gam_L - gam) as 16-bit hi + lo pairs (final state 2.0e-5 from
    # the fp32 reference instead of 2.4e-3, interpreter, t=200, dk 64; the output's error is the same).
    # Off by default: two more (64, dk) tiles per pipeline stage need 234 KB of shared memory at 2
    # stages (over an H100's 227), and at 1 stage the loads are not pipelined (and it spills 160 B).
    k_lo: int = 0
    kkt_bkc: int = 32  # dk slice of the kkt kernel's diagonal-block broadcast
    kkt_warps: int = 4


@triton.jit
def _kda_prep_kernel(
    q_ptr, k_ptr, g_ptr, gam_ptr, qg_ptr, kg_ptr, kd_ptr, kgl_ptr, kdl_ptr,
    T, H, DK, NCHUNK,
    BKP: tl.constexpr, LO: tl.constexpr,
):  # fmt: skip
    """For chunk c and the BKP channels from BKP * program_id(2): gam (fp32, every row of the chunk) and the
    decayed operands of the sequential pass in the input dtype: q exp2(gam) and k exp2(gam) (reads of
    the entering state) and k exp2(gam_L - gam) (writes, decayed to the chunk's end). LO: also the
    rounding residues of the two k operands (kgl, kdl: the fp32 value minus its 16-bit one)."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs_l = tl.arange(0, 64)
    offs_k = tl.program_id(2) * BKP + tl.arange(0, BKP)
    t_idx = c * 64 + offs_l
    mk = offs_k[None, :] < DK
    m = (t_idx[:, None] < T) & mk
    off = ((bi * T + t_idx[:, None]) * H + hi) * DK + offs_k[None, :]
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    gam = tl.cumsum(g * 1.4426950408889634, axis=0)
    last = tl.sum(tl.where(offs_l[:, None] == 63, gam, 0.0), axis=0)  # row 63, as the fused kernel reads it
    base = ((bi * H + hi) * NCHUNK + c) * 64 * DK
    tl.store(gam_ptr + base + offs_l[:, None] * DK + offs_k[None, :], gam, mask=mk)
    dtype = kg_ptr.dtype.element_ty
    up = tl.exp2(gam)
    k = tl.load(k_ptr + off, mask=m, other=0.0).to(tl.float32)
    kg = k * up
    kd = k * tl.exp2(last[None, :] - gam)
    tl.store(kg_ptr + off, kg.to(dtype), mask=m)
    tl.store(kd_ptr + off, kd.to(dtype), mask=m)
    if LO:
        tl.store(kgl_ptr + off, (kg - kg.to(dtype).to(tl.float32)).to(dtype), mask=m)
        tl.store(kdl_ptr + off, (kd - kd.to(dtype).to(tl.float32)).to(dtype), mask=m)
    q = tl.load(q_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(qg_ptr + off, (q * up).to(dtype), mask=m)


@triton.jit
def _rows(ptr, row0, base_row, T, DK, H, hi, bi, k0, BKC: tl.constexpr):
    """(16, BKC) fp32 tile of a (b, t, h, dk) tensor: tokens base_row + row0 + [0, 16) of the chunk
    starting at token base_row, channels k0 + [0, BKC); zero past t or dk."""
    r16 = tl.arange(0, 16)
    cols = k0 + tl.arange(0, BKC)
    t_idx = base_row + row0 + r16
    return tl.load(
        ptr + ((bi * T + t_idx[:, None]) * H + hi) * DK + cols[None, :],
        mask=(t_idx[:, None] < T) & (cols[None, :] < DK),
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _gam_rows(gam_ptr, gbase, row0, DK, k0, BKC: tl.constexpr):
    """(16, BKC) tile of the chunk's gam: rows row0 + [0, 16), channels k0 + [0, BKC)."""
    r16 = tl.arange(0, 16)
    cols = k0 + tl.arange(0, BKC)
    return tl.load(
        gam_ptr + gbase + (row0 + r16[:, None]) * DK + cols[None, :], mask=cols[None, :] < DK, other=0.0
    )


@triton.jit
def _kda_kkt_kernel(
    q_ptr, k_ptr, gam_ptr, beta_ptr, a_ptr, aqk_ptr,
    T, H, DK, NCHUNK,
    BKC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Row block i of A (strictly lower, fp32) and of the decayed q.k matrix (j <= i, aqk's dtype), only
    the 16x16 blocks on and below the diagonal (the solve and the fused kernel read no other)."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    i = tl.program_id(2)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    r16 = tl.arange(0, 16)
    row_i = i * 16
    t0 = c * 64
    gbase = ((bi * H + hi) * NCHUNK + c) * 64 * DK
    base = ((bi * H + hi) * NCHUNK + c) * 4096
    t_i = t0 + row_i + r16
    beta = tl.load(beta_ptr + (bi * T + t_i) * H + hi, mask=t_i < T, other=0.0).to(tl.float32)
    strict = r16[:, None] > r16[None, :]
    causal = r16[:, None] >= r16[None, :]
    blk = (row_i + r16[:, None]) * 64 + r16[None, :]  # block (i, 0); + 16 j for block (i, j)

    # Diagonal block: every pair's decay exp2(gam_i - gam_j), j <= i, formed elementwise.
    a_d = tl.zeros((16, 16), dtype=tl.float32)
    qk_d = tl.zeros((16, 16), dtype=tl.float32)
    for k0 in range(0, DK, BKC):
        k_i = _rows(k_ptr, row_i, t0, T, DK, H, hi, bi, k0, BKC)
        q_i = _rows(q_ptr, row_i, t0, T, DK, H, hi, bi, k0, BKC)
        g_i = _gam_rows(gam_ptr, gbase, row_i, DK, k0, BKC)
        diff = g_i[:, None, :] - g_i[None, :, :]  # (16, 16, BKC): gam_i - gam_j
        dec = tl.exp2(tl.where(causal[:, :, None], diff, 0.0))
        kj = k_i[None, :, :] * dec
        a_d += tl.sum(k_i[:, None, :] * kj, axis=2)
        qk_d += tl.sum(q_i[:, None, :] * kj, axis=2)
    tl.store(a_ptr + base + blk + row_i, tl.where(strict, beta[:, None] * a_d, 0.0))
    tl.store(aqk_ptr + base + blk + row_i, tl.where(causal, qk_d, 0.0).to(aqk_ptr.dtype.element_ty))

    # Blocks j < i: the decay split at ref = gam of row 16 i - 1 (between every row of block j and
    # every row of block i), one product per dk slice.
    for j in range(0, i):
        a_o = tl.zeros((16, 16), dtype=tl.float32)
        qk_o = tl.zeros((16, 16), dtype=tl.float32)
        for k0 in range(0, DK, BKC):
            cols = k0 + tl.arange(0, BKC)
            ref = tl.load(gam_ptr + gbase + (row_i - 1) * DK + cols, mask=cols < DK, other=0.0)
            g_i = _gam_rows(gam_ptr, gbase, row_i, DK, k0, BKC)
            g_j = _gam_rows(gam_ptr, gbase, j * 16, DK, k0, BKC)
            down = tl.exp2(g_i - ref[None, :])  # <= 1
            k_i = _rows(k_ptr, row_i, t0, T, DK, H, hi, bi, k0, BKC) * down
            q_i = _rows(q_ptr, row_i, t0, T, DK, H, hi, bi, k0, BKC) * down
            k_j = _rows(k_ptr, j * 16, t0, T, DK, H, hi, bi, k0, BKC) * tl.exp2(ref[None, :] - g_j)  # <= 1
            a_o += _mm(k_i, tl.trans(k_j), IEEE)
            qk_o += _mm(q_i, tl.trans(k_j), IEEE)
        tl.store(a_ptr + base + blk + j * 16, beta[:, None] * a_o)
        tl.store(aqk_ptr + base + blk + j * 16, qk_o.to(aqk_ptr.dtype.element_ty))


@triton.jit
def _kda_fused_kernel(
    qg_ptr, kg_ptr, kd_ptr, kgl_ptr, kdl_ptr, v_ptr, beta_ptr, gam_ptr, t_ptr, aqk_ptr, s0_ptr, o_ptr,
    final_ptr, T, H, DK, DV, NCHUNK, scale,
    HAS_S0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr, HILO: tl.constexpr,
    LO: tl.constexpr,
):  # fmt: skip
    """One (batch*head, dv-block), sequential over chunks, the state S (BK, BV) fp32 in registers.
    LO: the k operands' rounding residues join the state's products (one more product each), so
    they carry ~16 mantissa bits as the state's own hi + lo pairs do."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs_l = tl.arange(0, 64)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    dtype = kg_ptr.dtype.element_ty
    state_off = (bi * H + hi) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + state_off, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    blocks = (offs_l[:, None] // 16) >= (offs_l[None, :] // 16)  # the blocks the kkt / solve wrote
    for c in range(NCHUNK):
        t_idx = c * 64 + offs_l
        mt = t_idx < T
        row = (bi * T + t_idx[:, None]) * H + hi
        m_lk = mt[:, None] & mk[None, :]
        m_lv = mt[:, None] & mv[None, :]
        kg = tl.load(kg_ptr + row * DK + offs_k[None, :], mask=m_lk, other=0.0)
        v = tl.load(v_ptr + row * DV + offs_v[None, :], mask=m_lv, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32)
        mat = ((bi * H + hi) * NCHUNK + c) * 4096 + offs_l[:, None] * 64 + offs_l[None, :]
        tm = tl.load(t_ptr + mat, mask=blocks, other=0.0)  # (I + A)^-1, lower triangular
        S16 = S.to(dtype)
        # With HILO (16-bit inputs) S as a 16-bit hi + lo pair (triton_gated_delta_rule.py's `fu_prec`
        # 2: ~16 mantissa bits, kg stays a 16-bit operand); else one product (fp32 inputs: exact).
        ks = _state_dot(kg, S, S16, 2 if HILO else 0, IEEE)
        if LO:
            ks += _mm(tl.load(kgl_ptr + row * DK + offs_k[None, :], mask=m_lk, other=0.0), S16, IEEE)
        r = beta[:, None] * (v - ks)
        vnew = _mm(tm, r, IEEE)  # (64, BV) fp32
        qg = tl.load(qg_ptr + row * DK + offs_k[None, :], mask=m_lk, other=0.0)
        qk = tl.load(aqk_ptr + mat, mask=blocks, other=0.0)
        # The output reads the state in the input dtype, as triton_gated_delta_rule.py's does.
        vnew16 = vnew.to(dtype)
        o = _mm(qg, S16, IEEE) + _mm(qk, vnew16, IEEE)
        tl.store(o_ptr + row * DV + offs_v[None, :], (o * scale).to(o_ptr.dtype.element_ty), mask=m_lv)
        kd = tl.load(kd_ptr + row * DK + offs_k[None, :], mask=m_lk, other=0.0)
        last = tl.load(
            gam_ptr + ((bi * H + hi) * NCHUNK + c) * 64 * DK + 63 * DK + offs_k, mask=mk, other=0.0
        )
        S = S * tl.exp2(last)[:, None] + _mm(tl.trans(kd), vnew16, IEEE)
        if HILO:
            S += _mm(tl.trans(kd), (vnew - vnew16.to(tl.float32)).to(dtype), IEEE)
        if LO:
            kdl = tl.load(kdl_ptr + row * DK + offs_k[None, :], mask=m_lk, other=0.0)
            S += _mm(tl.trans(kdl), vnew16, IEEE)
    tl.store(final_ptr + state_off, S, mask=mk[:, None] & mv[None, :])


def chunk_kda_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    config: KdaLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`config` replaces the default launch (the benchmark passes its own)."""
    check_delta_inputs(q, k, v, g, beta, initial_state, per_channel=True)
    del chunk_size  # the kernels use CHUNK = 64; the result does not depend on it
    cfg = config or KdaLaunch()
    b, t, h, dk = q.shape
    dv = v.shape[3]
    q, k, v, g, beta, scale, ieee, nchunk, BK = chunk_operands(q, k, v, g, beta, scale)
    dev = v.device
    gam = torch.empty((b * h, nchunk, CHUNK, dk), device=dev, dtype=torch.float32)
    qg, kg, kd = (torch.empty_like(k) for _ in range(3))
    lo = bool(cfg.k_lo) and v.dtype != torch.float32
    kgl, kdl = (torch.empty_like(k), torch.empty_like(k)) if lo else (kg, kd)
    bkp = min(BK, 64)
    _kda_prep_kernel[(nchunk, b * h, triton.cdiv(dk, bkp))](
        q, k, g, gam, qg, kg, kd, kgl, kdl, t, h, dk, nchunk, BKP=bkp, LO=lo, num_warps=4
    )
    a_buf = torch.empty((b * h * nchunk, CHUNK, CHUNK), device=dev, dtype=torch.float32)
    aqk = torch.empty_like(a_buf, dtype=v.dtype)  # the causal q.k matrix, an operand in the input dtype
    _kda_kkt_kernel[(nchunk, b * h, CHUNK // 16)](
        q, k, gam, beta, a_buf, aqk, t, h, dk, nchunk,
        BKC=min(BK, cfg.kkt_bkc), IEEE=True, num_warps=cfg.kkt_warps,
    )  # fmt: skip
    t_buf = torch.empty_like(a_buf)
    _gdr_solve_kernel[(b * h * nchunk,)](a_buf, t_buf, num_warps=1)
    o, final, s0 = state_buffers(v, dk, initial_state)
    bv = fused_bv(dv, b * h, dev) if cfg.fu_bv == 0 else min(cfg.fu_bv, max(16, triton.next_power_of_2(dv)))
    _kda_fused_kernel[(triton.cdiv(dv, bv), b * h)](
        qg, kg, kd, kgl, kdl, v, beta, gam, t_buf, aqk, s0, o, final, t, h, dk, dv, nchunk, float(scale),
        HAS_S0=initial_state is not None, BK=BK, BV=bv, IEEE=ieee, HILO=v.dtype != torch.float32, LO=lo,
        num_warps=cfg.fu_warps, num_stages=cfg.fu_stages,
    )  # fmt: skip
    return o, final
