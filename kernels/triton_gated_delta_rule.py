"""Triton chunked gated delta rule (forward), same contract as `chunk_gated_delta_rule_ref`.

Three launches over chunks of 64 tokens (the result does not depend on the chunk size, so the
`chunk_size` argument of the public op is a hint the Triton path does not need):

1. `_gdr_prepare_kernel`, one program per (chunk, batch*head), parallel: builds the unit lower
   triangular I + A (A_ij = beta_i exp(gam_i - gam_j) k_i.k_j, j < i), inverts it blockwise (forward
   substitution on four 16x16 diagonal blocks, then block products for the rest), and writes
   W = (I+A)^-1 diag(beta exp(gam)) K and U = (I+A)^-1 diag(beta) V.
2. `_gdr_states_kernel`, one program per (batch*head, dv-block), sequential over chunks: stores the
   state entering each chunk, v_new = U - W S, and S <- exp(gam_L) S + (exp(gam_L - gam) K)^T v_new.
3. `_gdr_output_kernel`, one program per (chunk, batch*head, dv-block), parallel:
   o = scale (exp(gam) Q S_in + [(Q K^T) exp(gam_i - gam_j)]_causal v_new).

Forward substitution is used instead of a power series because highly correlated keys make the powers
of A huge (binomial growth) and the series cancels catastrophically; substitution does not.
Decays are carried in base 2 (exp2). Intermediates (W, U, v_new, entering states) are fp32 for fp32
inputs and the input dtype for 16-bit inputs; the carried state is always fp32 and its updates use fp32
operands (tf32 on the GPU for 16-bit inputs, exact fp32 for fp32 inputs and on the CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.gated_delta_rule import check_gdr_inputs

CHUNK = 64
# Launch parameters (block width over dv, warps, pipeline depth); bench/gpu_kernels.py sweeps them.
CONFIG = {
    "u_bv": 64,
    "prep_warps": 4,
    "st_bv": 32,
    "st_warps": 4,
    "st_stages": 2,
    "out_bv": 64,
    "out_warps": 4,
}


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    if IEEE:  # exact fp32 (fp32 inputs, and the CPU interpreter, whose 16-bit dot is wrong)
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _mm_exact(a, b):
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _inv_unit_lower16(a):
    """(I + a)^-1 for a strictly lower 16x16 a, by forward substitution row by row."""
    rows = tl.arange(0, 16)[:, None]
    cols = tl.arange(0, 16)[None, :]
    t = (rows == cols).to(tl.float32)
    for r in tl.static_range(1, 16):
        a_r = tl.sum(tl.where(rows == r, a, 0.0), axis=0)  # row r of a, indexed by column
        new = -tl.sum(a_r[:, None] * t, axis=0)  # -sum_j a[r, j] t[j, :], rows j < r are final
        t = tl.where(rows == r, new[None, :] + (cols == r).to(tl.float32), t)
    return t


@triton.jit
def _load_rows(ptr, bi, T, H, D, t0, hi, offs_d):
    offs = t0 + tl.arange(0, 16)
    m = (offs[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(ptr + ((bi * T + offs[:, None]) * H + hi) * D + offs_d[None, :], mask=m, other=0.0)


@triton.jit
def _load_vec(ptr, bi, T, H, t0, hi):
    offs = t0 + tl.arange(0, 16)
    return tl.load(ptr + (bi * T + offs) * H + hi, mask=offs < T, other=0.0).to(tl.float32)


@triton.jit
def _a_block(ki, kj, beta_i, gi, gj):
    return beta_i[:, None] * _mm_exact(ki, tl.trans(kj)) * tl.exp2(gi[:, None] - gj[None, :])


@triton.jit
def _store_rows(ptr, val, bi, T, H, D, t0, hi, offs_d):
    offs = t0 + tl.arange(0, 16)
    m = (offs[:, None] < T) & (offs_d[None, :] < D)
    tl.store(
        ptr + ((bi * T + offs[:, None]) * H + hi) * D + offs_d[None, :], val.to(ptr.dtype.element_ty), mask=m
    )


@triton.jit
def _gdr_prepare_kernel(
    k_ptr, v_ptr, g_ptr, beta_ptr, w_ptr, u_ptr,
    T, H, DK, DV,
    BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    t0 = c * 64
    offs_k = tl.arange(0, BK)
    LOG2E = 1.4426950408889634
    k0 = _load_rows(k_ptr, bi, T, H, DK, t0, hi, offs_k).to(tl.float32)
    k1 = _load_rows(k_ptr, bi, T, H, DK, t0 + 16, hi, offs_k).to(tl.float32)
    k2 = _load_rows(k_ptr, bi, T, H, DK, t0 + 32, hi, offs_k).to(tl.float32)
    k3 = _load_rows(k_ptr, bi, T, H, DK, t0 + 48, hi, offs_k).to(tl.float32)
    b0 = _load_vec(beta_ptr, bi, T, H, t0, hi)
    b1 = _load_vec(beta_ptr, bi, T, H, t0 + 16, hi)
    b2 = _load_vec(beta_ptr, bi, T, H, t0 + 32, hi)
    b3 = _load_vec(beta_ptr, bi, T, H, t0 + 48, hi)
    g0 = _load_vec(g_ptr, bi, T, H, t0, hi) * LOG2E
    g1 = _load_vec(g_ptr, bi, T, H, t0 + 16, hi) * LOG2E
    g2 = _load_vec(g_ptr, bi, T, H, t0 + 32, hi) * LOG2E
    g3 = _load_vec(g_ptr, bi, T, H, t0 + 48, hi) * LOG2E
    # cumulative log2-decay from the chunk start, block by block
    c0 = tl.cumsum(g0, axis=0)
    c1 = tl.cumsum(g1, axis=0) + tl.sum(g0, axis=0)
    c2 = tl.cumsum(g2, axis=0) + tl.sum(g0, axis=0) + tl.sum(g1, axis=0)
    c3 = tl.cumsum(g3, axis=0) + tl.sum(g0, axis=0) + tl.sum(g1, axis=0) + tl.sum(g2, axis=0)

    rows = tl.arange(0, 16)[:, None]
    cols = tl.arange(0, 16)[None, :]
    strict = rows > cols
    d0 = _inv_unit_lower16(tl.where(strict, _a_block(k0, k0, b0, c0, c0), 0.0))
    d1 = _inv_unit_lower16(tl.where(strict, _a_block(k1, k1, b1, c1, c1), 0.0))
    d2 = _inv_unit_lower16(tl.where(strict, _a_block(k2, k2, b2, c2, c2), 0.0))
    d3 = _inv_unit_lower16(tl.where(strict, _a_block(k3, k3, b3, c3, c3), 0.0))
    a10 = _a_block(k1, k0, b1, c1, c0)
    a20 = _a_block(k2, k0, b2, c2, c0)
    a21 = _a_block(k2, k1, b2, c2, c1)
    a30 = _a_block(k3, k0, b3, c3, c0)
    a31 = _a_block(k3, k1, b3, c3, c1)
    a32 = _a_block(k3, k2, b3, c3, c2)
    # block inverse of the 64x64 unit lower triangular matrix (see module doc)
    x10 = -_mm_exact(_mm_exact(d1, a10), d0)
    x32 = -_mm_exact(_mm_exact(d3, a32), d2)
    p20 = _mm_exact(a20, d0) + _mm_exact(a21, x10)
    p21 = _mm_exact(a21, d1)
    p30 = _mm_exact(a30, d0) + _mm_exact(a31, x10)
    p31 = _mm_exact(a31, d1)
    r20 = -_mm_exact(d2, p20)
    r21 = -_mm_exact(d2, p21)
    r30 = -(_mm_exact(x32, p20) + _mm_exact(d3, p30))
    r31 = -(_mm_exact(x32, p21) + _mm_exact(d3, p31))

    # W = T diag(beta exp(gam)) K
    kb0 = k0 * (b0 * tl.exp2(c0))[:, None]
    kb1 = k1 * (b1 * tl.exp2(c1))[:, None]
    kb2 = k2 * (b2 * tl.exp2(c2))[:, None]
    kb3 = k3 * (b3 * tl.exp2(c3))[:, None]
    _store_rows(w_ptr, _mm(d0, kb0, IEEE), bi, T, H, DK, t0, hi, offs_k)
    _store_rows(w_ptr, _mm(x10, kb0, IEEE) + _mm(d1, kb1, IEEE), bi, T, H, DK, t0 + 16, hi, offs_k)
    w2 = _mm(r20, kb0, IEEE) + _mm(r21, kb1, IEEE) + _mm(d2, kb2, IEEE)
    _store_rows(w_ptr, w2, bi, T, H, DK, t0 + 32, hi, offs_k)
    w3 = _mm(r30, kb0, IEEE) + _mm(r31, kb1, IEEE) + _mm(x32, kb2, IEEE) + _mm(d3, kb3, IEEE)
    _store_rows(w_ptr, w3, bi, T, H, DK, t0 + 48, hi, offs_k)
    # U = T diag(beta) V, one dv-block at a time
    for v_start in range(0, DV, BV):
        offs_v = v_start + tl.arange(0, BV)
        v0 = _load_rows(v_ptr, bi, T, H, DV, t0, hi, offs_v).to(tl.float32) * b0[:, None]
        v1 = _load_rows(v_ptr, bi, T, H, DV, t0 + 16, hi, offs_v).to(tl.float32) * b1[:, None]
        v2 = _load_rows(v_ptr, bi, T, H, DV, t0 + 32, hi, offs_v).to(tl.float32) * b2[:, None]
        v3 = _load_rows(v_ptr, bi, T, H, DV, t0 + 48, hi, offs_v).to(tl.float32) * b3[:, None]
        _store_rows(u_ptr, _mm(d0, v0, IEEE), bi, T, H, DV, t0, hi, offs_v)
        _store_rows(u_ptr, _mm(x10, v0, IEEE) + _mm(d1, v1, IEEE), bi, T, H, DV, t0 + 16, hi, offs_v)
        u2 = _mm(r20, v0, IEEE) + _mm(r21, v1, IEEE) + _mm(d2, v2, IEEE)
        _store_rows(u_ptr, u2, bi, T, H, DV, t0 + 32, hi, offs_v)
        u3 = _mm(r30, v0, IEEE) + _mm(r31, v1, IEEE) + _mm(x32, v2, IEEE) + _mm(d3, v3, IEEE)
        _store_rows(u_ptr, u3, bi, T, H, DV, t0 + 48, hi, offs_v)


@triton.jit
def _gdr_states_kernel(
    k_ptr, g_ptr, w_ptr, u_ptr, s0_ptr, states_ptr, vnew_ptr, final_ptr,
    T, H, DK, DV, NCHUNK,
    HAS_S0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs_l = tl.arange(0, 64)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    m_kv = mk[:, None] & mv[None, :]
    state_base = (bi * H + hi) * DK * DV
    kv_off = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + state_base + kv_off, mask=m_kv, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    for c in range(NCHUNK):
        tl.store(
            states_ptr + ((bi * H + hi) * NCHUNK + c) * DK * DV + kv_off,
            S.to(states_ptr.dtype.element_ty),
            mask=m_kv,
        )
        t_idx = c * 64 + offs_l
        mt = t_idx < T
        row = (bi * T + t_idx[:, None]) * H + hi
        w = tl.load(w_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        u = tl.load(u_ptr + row * DV + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        vnew = u.to(tl.float32) - _mm(w.to(tl.float32), S, IEEE)  # (64, BV)
        tl.store(
            vnew_ptr + row * DV + offs_v[None, :],
            vnew.to(vnew_ptr.dtype.element_ty),
            mask=mt[:, None] & mv[None, :],
        )
        g = tl.load(g_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32) * 1.4426950408889634
        gam = tl.cumsum(g, axis=0)
        last = tl.sum(g, axis=0)
        k = tl.load(k_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        kd = k.to(tl.float32) * tl.exp2(last - gam)[:, None]
        S = S * tl.exp2(last) + _mm(tl.trans(kd), vnew, IEEE)
    tl.store(final_ptr + state_base + kv_off, S, mask=m_kv)


@triton.jit
def _gdr_output_kernel(
    q_ptr, k_ptr, g_ptr, vnew_ptr, states_ptr, o_ptr,
    T, H, DK, DV, NCHUNK, scale,
    BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_v = tl.program_id(2)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs_l = tl.arange(0, 64)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    t_idx = c * 64 + offs_l
    mt = t_idx < T
    row = (bi * T + t_idx[:, None]) * H + hi
    q = tl.load(q_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    k = tl.load(k_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    g = tl.load(g_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32) * 1.4426950408889634
    gam = tl.cumsum(g, axis=0)
    causal = offs_l[:, None] >= offs_l[None, :]
    qk = _mm(q, tl.trans(k), IEEE)
    qk = tl.where(causal, qk * tl.exp2(tl.where(causal, gam[:, None] - gam[None, :], 0.0)), 0.0)
    vnew = tl.load(vnew_ptr + row * DV + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
    s_in = tl.load(
        states_ptr + ((bi * H + hi) * NCHUNK + c) * DK * DV + offs_k[:, None] * DV + offs_v[None, :],
        mask=mk[:, None] & mv[None, :],
        other=0.0,
    )
    o = _mm(qk.to(vnew.dtype), vnew, IEEE) + tl.exp2(gam)[:, None] * _mm(q, s_in.to(q.dtype), IEEE)
    tl.store(
        o_ptr + row * DV + offs_v[None, :],
        (o * scale).to(o_ptr.dtype.element_ty),
        mask=mt[:, None] & mv[None, :],
    )


def chunk_gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    intermediate_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`intermediate_dtype` (private knob for the benchmark): dtype of W, U, v_new and the entering
    states; default fp32 for fp32 inputs, else the input dtype (half the bytes, like fla)."""
    check_gdr_inputs(q, k, v, g, beta, initial_state)
    del chunk_size  # the kernels use CHUNK = 64; the result does not depend on it
    b, t, h, dk = q.shape
    dv = v.shape[3]
    scale = dk**-0.5 if scale is None else scale
    q, k, v, g, beta = (a.contiguous() for a in (q, k, v, g, beta))
    k, q = k.to(v.dtype), q.to(v.dtype)  # one operand dtype for the dots
    ieee = v.dtype == torch.float32 or not v.is_cuda
    inter = intermediate_dtype or (torch.float32 if v.dtype == torch.float32 else v.dtype)
    nchunk = triton.cdiv(t, CHUNK)
    BK = max(16, triton.next_power_of_2(dk))
    cfg = CONFIG

    def bv(key: str) -> int:
        return min(cfg[key], max(16, triton.next_power_of_2(dv)))

    dev = v.device
    w = torch.empty((b, t, h, dk), device=dev, dtype=inter)
    u = torch.empty((b, t, h, dv), device=dev, dtype=inter)
    vnew = torch.empty((b, t, h, dv), device=dev, dtype=inter)
    states = torch.empty((b, h, nchunk, dk, dv), device=dev, dtype=inter)
    final = torch.empty((b, h, dk, dv), device=dev, dtype=torch.float32)
    o = torch.empty_like(v)
    s0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    _gdr_prepare_kernel[(nchunk, b * h)](
        k, v, g, beta, w, u, t, h, dk, dv, BK=BK, BV=bv("u_bv"), IEEE=ieee, num_warps=cfg["prep_warps"]
    )  # fmt: skip
    _gdr_states_kernel[(triton.cdiv(dv, bv("st_bv")), b * h)](
        k, g, w, u, s0, states, vnew, final, t, h, dk, dv, nchunk,
        HAS_S0=initial_state is not None, BK=BK, BV=bv("st_bv"), IEEE=ieee,
        num_warps=cfg["st_warps"], num_stages=cfg["st_stages"],
    )  # fmt: skip
    _gdr_output_kernel[(nchunk, b * h, triton.cdiv(dv, bv("out_bv")))](
        q, k, g, vnew, states, o, t, h, dk, dv, nchunk, float(scale),
        BK=BK, BV=bv("out_bv"), IEEE=ieee, num_warps=cfg["out_warps"],
    )  # fmt: skip
    return o, final
