"""Triton version of kernels/gdn_decode_prep.py (same contract; see that module's doc)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import GdnPrep, check_gdn_prep
from hybrid_agent.kernels.errors import KernelInputError


@triton.jit
def _conv_silu(
    x_ptr, s_ptr, w_ptr, b_ptr, chan, mask, W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """Causal-conv step for the channels `chan` of one row: returns (SiLU output fp32, new state tile,
    state offsets, state mask); the caller stores the new state after a barrier."""
    offs_w = tl.arange(0, WP)
    ms = mask[:, None] & (offs_w[None, :] < W - 1)
    s_off = chan[:, None] * (W - 1) + offs_w[None, :]
    old = tl.load(s_ptr + s_off, mask=ms, other=0.0)  # (BD, WP) fp32
    wt = tl.load(w_ptr + chan[:, None] * W + offs_w[None, :], mask=ms, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    y = tl.sum(old * wt, axis=1) + x * tl.load(w_ptr + chan * W + W - 1, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    # new state: drop the oldest input, keep the newest W - 1 (old[j + 1] then x)
    nxt = tl.load(s_ptr + s_off + 1, mask=ms & (offs_w[None, :] + 1 < W - 1), other=0.0)
    new = tl.where(offs_w[None, :] == W - 2, x[:, None], nxt)
    return y * tl.sigmoid(y), new, s_off, ms


@triton.jit
def _gdn_prep_kernel(
    proj_ptr, s_ptr, w_ptr, b_ptr, alog_ptr, dtb_ptr, q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr,
    N, C, Hk, Dk, Hv, Dv, a_off, b_off,
    R: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, NEG: tl.constexpr,
    BK: tl.constexpr, BVR: tl.constexpr, RP: tl.constexpr,
):  # fmt: skip
    # one program per (row, key head): its q and k channels and the v channels of its R value heads
    # belong to no other program, so the conv state is updated without races
    bi = tl.program_id(0).to(tl.int64)
    hk = tl.program_id(1)
    x_row = proj_ptr + bi * N
    s_row = s_ptr + bi * C * (W - 1)
    offs_k = tl.arange(0, BK)
    mk = offs_k < Dk
    offs_v = tl.arange(0, BVR)
    mv = offs_v < R * Dv
    cq = hk * Dk + offs_k
    ck = Hk * Dk + hk * Dk + offs_k
    cv = 2 * Hk * Dk + hk * R * Dv + offs_v
    yq, nq, oq, mq = _conv_silu(x_row, s_row, w_ptr, b_ptr, cq, mk, W, WP, HAS_BIAS)
    yk, nk, ok, mkk = _conv_silu(x_row, s_row, w_ptr, b_ptr, ck, mk, W, WP, HAS_BIAS)
    yv, nv, ov, mvv = _conv_silu(x_row, s_row, w_ptr, b_ptr, cv, mv, W, WP, HAS_BIAS)
    tl.debug_barrier()  # every thread has read the old state before any writes the new one
    tl.store(s_row + oq, nq, mask=mq)
    tl.store(s_row + ok, nk, mask=mkk)
    tl.store(s_row + ov, nv, mask=mvv)
    dt = q_ptr.dtype.element_ty
    qf = yq.to(dt).to(tl.float32)  # the conv output is rounded to the activations' dtype, as in the model
    kf = yk.to(dt).to(tl.float32)
    qn = (qf * (1.0 / tl.sqrt(tl.sum(qf * qf, axis=0) + 1e-6))).to(dt)
    kn = (kf * (1.0 / tl.sqrt(tl.sum(kf * kf, axis=0) + 1e-6))).to(dt)
    for i in range(R):  # q and k repeated to the R value heads that share this key head
        hv = hk * R + i
        tl.store(q_ptr + (bi * Hv + hv) * Dk + offs_k, qn, mask=mk)
        tl.store(k_ptr + (bi * Hv + hv) * Dk + offs_k, kn, mask=mk)
    tl.store(v_ptr + (bi * Hv + hk * R) * Dv + offs_v, yv.to(dt), mask=mv)
    offs_r = tl.arange(0, RP)
    mr = offs_r < R
    hvs = hk * R + offs_r
    a = tl.load(x_row + a_off + hvs, mask=mr, other=0.0).to(tl.float32)
    braw = tl.load(x_row + b_off + hvs, mask=mr, other=0.0).to(tl.float32)
    z = a + tl.load(dtb_ptr + hvs, mask=mr, other=0.0).to(tl.float32)
    sp = tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(z)))  # softplus with torch's threshold
    g = -tl.exp(tl.load(alog_ptr + hvs, mask=mr, other=0.0).to(tl.float32)) * sp
    beta = tl.sigmoid(braw)
    if NEG:
        beta = beta * 2.0
    tl.store(g_ptr + bi * Hv + hvs, g, mask=mr)
    tl.store(beta_ptr + bi * Hv + hvs, beta, mask=mr)


def gdn_decode_prep_triton(
    proj: torch.Tensor, conv_state: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None,
    A_log: torch.Tensor, dt_bias: torch.Tensor, *, Hk: int, Dk: int, Hv: int, Dv: int, a_off: int, b_off: int,
    allow_neg_eigval: bool,
) -> GdnPrep:  # fmt: skip
    C = check_gdn_prep(proj, conv_state, Hk, Dk, Hv, Dv, a_off, b_off)
    if proj.stride(1) != 1 or not conv_state.is_contiguous() or not conv_w.is_contiguous():
        raise KernelInputError("gdn_decode_prep_triton needs contiguous rows of proj, conv_state and conv_w")
    B, W = proj.shape[0], conv_w.shape[1]
    R = Hv // Hk
    q = torch.empty(B, Hv, Dk, device=proj.device, dtype=proj.dtype)
    k = torch.empty_like(q)
    v = torch.empty(B, Hv, Dv, device=proj.device, dtype=proj.dtype)
    g = torch.empty(B, Hv, device=proj.device, dtype=torch.float32)
    beta = torch.empty_like(g)
    _gdn_prep_kernel[(B, Hk)](
        proj, conv_state, conv_w, conv_b if conv_b is not None else conv_w, A_log, dt_bias, q, k, v, g, beta,
        proj.stride(0), C, Hk, Dk, Hv, Dv, a_off, b_off,
        R=R, W=W, WP=triton.next_power_of_2(max(1, W - 1)), HAS_BIAS=conv_b is not None, NEG=allow_neg_eigval,
        BK=triton.next_power_of_2(Dk), BVR=triton.next_power_of_2(R * Dv), RP=triton.next_power_of_2(R),
        num_warps=4,
    )  # fmt: skip
    return q, k, v, g, beta
