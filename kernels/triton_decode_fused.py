"""Triton versions of kernels/decode_fused.py (same contracts; see that module's doc)."""

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
    NORM: tl.constexpr, R: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    # grid (B, 3): q, k (norm + RoPE; k into the cache) and v (into the cache) of one row each
    b = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
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
        if b == 0:
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
        NORM=norm, R=R, BH=BH, BD=BD, num_warps=8 if BH * BD >= 2048 else 4,
    )  # fmt: skip
    return q


@triton.jit
def _argmax_blocks_kernel(x_ptr, val_ptr, idx_ptr, V, s_row, P, BLOCK: tl.constexpr):
    # grid (B, P): the maximum of one block of a row and the first index where it occurs
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    offs = p * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + b * s_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN counts as the maximum, as in torch.argmax
    v, i = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(val_ptr + b * P + p, v)
    tl.store(idx_ptr + b * P + p, p * BLOCK + i)


@triton.jit
def _greedy_finish_kernel(val_ptr, idx_ptr, tok_ptr, pos_ptr, ids_ptr, B, P, V, s_ids, BP: tl.constexpr):
    # one program: the row maxima from the block maxima (the smallest index among equal maxima: blocks
    # hold increasing indices), then tok, ids[:, pos + 1] and pos + 1 (after every row has read pos)
    offs = tl.arange(0, BP)
    m = offs < P
    nxt = tl.load(pos_ptr) + 1
    for b in range(0, B):
        v = tl.load(val_ptr + b * P + offs, mask=m, other=-float("inf"))
        i = tl.load(idx_ptr + b * P + offs, mask=m, other=2147483647)
        best = tl.max(v, axis=0)
        arg = tl.min(tl.where(m & (v == best), i, 2147483647), axis=0)
        arg = tl.minimum(tl.maximum(arg, 0), V - 1).to(tl.int64)  # never a token id out of range
        tl.store(tok_ptr + b, arg)
        tl.store(ids_ptr + b * s_ids + nxt, arg)
    tl.store(pos_ptr, nxt)


def greedy_advance_triton(
    logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor
) -> None:
    if logits.stride(1) != 1 or not tok.is_contiguous() or ids.stride(1) != 1:
        raise KernelInputError("greedy_advance_triton needs contiguous logits rows, tok and ids rows")
    B, V = logits.shape
    BLOCK = 4096
    P = triton.cdiv(V, BLOCK)
    val = torch.empty(B, P, device=logits.device, dtype=torch.float32)
    idx = torch.empty(B, P, device=logits.device, dtype=torch.int32)
    _argmax_blocks_kernel[(B, P)](logits, val, idx, V, logits.stride(0), P, BLOCK=BLOCK, num_warps=8)
    _greedy_finish_kernel[(1,)](val, idx, tok, pos, ids, B, P, V, ids.stride(0),
                                BP=triton.next_power_of_2(P), num_warps=1)  # fmt: skip
