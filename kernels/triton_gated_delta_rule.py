"""Triton chunked gated delta rule (forward), same contract as `chunk_gated_delta_rule_ref`.

Chunks of 64 tokens (the result does not depend on the chunk size, so the `chunk_size` argument of
the public op is a hint the Triton path does not need). Default (fused) path, three launches:

1. triton_gdr_prepare `_gdr_kkt_kernel`, parallel over (chunk, batch*head): A = [beta_i
   exp(gam_i - gam_j) k_i.k_j]_{j<i}, and (`qk_pre`) the causal [q_i.k_j exp(gam_i - gam_j)] and
   the decay cumsums gam.
2. `_gdr_solve_kernel`: T = (I + A)^-1 by blockwise forward substitution.
3. `_gdr_fused_kernel`, one program per (batch*head, dv-block), sequential over chunks, the state
   in registers (fp32): v_new = T diag(beta) (V - diag(exp(gam)) K S) (W and U are never formed),
   o = scale (exp(gam) Q S + [qk] v_new), S <- exp(gam_L) S + K^T (exp(gam_L - gam) v_new). Only o
   goes to memory. The state's own products use 16-bit hi + lo operand pairs (`fu_prec` 2).

The split path (`fused` = 0, the benchmark's baseline) runs W/U,
`_gdr_states_kernel` (stores each chunk's entering state and v_new) and the parallel
`_gdr_output_kernel`. Decays are carried in base 2 (exp2). For fp32 inputs (and on the CPU
interpreter) every product is exact fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_delta_inputs
from hybrid_agent.kernels.triton_common import dot as _mm
from hybrid_agent.kernels.triton_gdr_prepare import (
    CHUNK,
    _gdr_kkt_kernel,
    _gdr_solve_kernel,
    _gdr_wu_kernel,
    chunk_operands,
    fused_bv,
    state_buffers,
)


@dataclass(frozen=True)
class GdrLaunch:
    """Launch parameters of `chunk_gated_delta_rule_triton` (block width over dv, warps, pipeline depth,
    path and precision switches), as ints so a benchmark can pass overrides as JSON. `launch_config`
    picks them."""

    fused: int = 1  # 1: kkt + solve, then `_gdr_fused_kernel`; 0: the five-launch split path
    fu_bv: int = 0  # fused dv-block; 0: by grid size, see triton_gdr_prepare.py's `fused_bv`
    fu_warps: int = 4
    fu_stages: int = 3  # 1.19 -> 1.03 ms with 3 instead of 2 at 16k, H32 K=V=128, H100 (NOTES.md)
    fu_prec: int = 2  # state products: 0 one 16-bit product, 1 tf32, 2 16-bit hi + lo pairs
    fu_t16: int = 0  # 1: T stored in the input dtype, one 16-bit T r product (else fp32 T, tf32)
    fu_tmask: int = 1  # 1: T read through a 16x16-block mask (vectorised) instead of an element mask
    fu_ksplit: int = 0  # 1: a dk that is no power of two as two tiles (96 = 64 + 32, see `_k_split`)
    kkt_lower: int = 1  # 1: A and q.k stored only in the 16x16 blocks on and below the diagonal
    qk_pre: int = 1  # 1: the causal q.k matrix and the decay cumsums come from the kkt kernel
    narrow: int = 1  # 1: allow 16-bit products of output width 32 (crashed once under Triton 3.6, NOTES.md)
    solve_warps: int = 1
    u_bv: int = 64  # split path: W/U kernel dv-block
    prep_warps: int = 4
    st_bv: int = 32  # split path: states kernel
    st_warps: int = 4
    st_stages: int = 2
    out_bv: int = 128  # split path: output kernel
    out_warps: int = 4


def launch_config(device: torch.device, shape: tuple[int, ...], dtype: torch.dtype) -> GdrLaunch:
    """The launch for q of `shape` (b, t, h, dk) and `dtype` on `device`: one choice for all of them
    (the dv-block is picked per grid inside, `fused_bv`), the best of the sweeps on an H100 (triton
    3.6) at 16k tokens (kernels/NOTES.md)."""
    del device, shape, dtype  # no choice depends on them yet
    return GdrLaunch()


def reference_overrides() -> dict[str, int]:
    """The baseline bench/gpu_kernels.py times against, as overrides of `launch_config`'s choice: the
    five-launch split path (W and U, the entering states and v_new go through memory)."""
    return {"fused": 0}


def variant_overrides() -> list[dict[str, int]]:
    """Alternatives bench/gpu_kernels.py times against the choice; tests/kernels/test_chunk_variants.py
    checks every one against the reference (each listed variant is compiled for every GPU test shape,
    so the list stays short).

    Measured and left out (H100, Triton 3.6, 16k tokens; kernels/NOTES.md): `fu_ksplit` with
    `fu_tmask` 1.278 ms, and with dv-block 32 / 2 stages 1.270 ms; the fla-precision variant at
    dv-block 32 / 2 stages 0.978 ms; `fu_stages` 2 1.19 ms at H32 K=V=128 (1.03 with 3); `fu_ksplit`
    alone 1.510 ms (unsplit 1.366), with `fu_tmask` and 2 stages at dv-block 64 1.395 ms.
    Wrong on an H100 under Triton 3.6, though right on the interpreter: `fu_warps` 8 (inf outputs);
    `fu_prec` 0 with T in bf16 read through an element mask (`fu_t16` 1, `fu_tmask` 0: 0.85 relative
    error and an illegal memory access at dv-block 32); `fu_stages` 1 (an illegal memory access at
    k96/v192, dv-block 64); T as power-of-two-scaled fp16 (~0.86 relative error at both test shapes);
    `fu_ksplit` 1 with `fu_prec` 0 and fp32 T (NaN outputs at k96/v192 with an initial state at
    dv-blocks 64 and 32, inf at 2k at dv-block 32; not diagnosed; the same with `fu_t16` passed).
    `fu_warps` 2 was right but 2.8x slower."""
    return [
        # OLMo shape (H30 dk 96 dv 192), 16k, H100: `fu_tmask` 1.242 ms vs 1.366 without it, same
        # errors (3.28e-3, state 3.85e-4; bench/results/gpu_kernels_s4_gdn_tune_a.json); `kkt_lower`
        # 1.224 ms vs 1.237 with `fu_tmask` alone and 1.364 with neither (gpu_kernels_s4_final.json)
        {"fu_tmask": 0, "kkt_lower": 0},  # T read through an element mask, full A and q.k
        {"kkt_lower": 0},
        # fla's precision (chosen only under the benchmark's `--bound fla`): 0.975 ms, errors at 2k
        # 3.68e-3 / state 2.30e-3 (fla 3.73e-3 / 2.52e-3; the default 3.28e-3 / 3.85e-4),
        # bench/results/gpu_kernels_s4_gdn_tune_b.json
        {"fu_ksplit": 1, "fu_prec": 0, "fu_t16": 1, "kkt_lower": 0},
    ]


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


@triton.jit
def _state_dot(a, S, S16, PREC: tl.constexpr, IEEE: tl.constexpr):
    """a @ S for a 16-bit (64, bk) tile a and the fp32 state part S (S16 = S in a's dtype), by PREC:
    0: one 16-bit product (as fla); 1: fp32 operands (tf32 on the GPU); 2: S as 16-bit hi + lo
    parts, two 16-bit products (~16-bit mantissa, more than tf32's 10), so a stays a 16-bit operand
    straight from shared memory: no fp32 copy of the (64, dk) tile in registers, which made the
    tf32 version spill (sm_90 compile: 255 regs + stack)."""
    if PREC == 1:
        return _mm(a.to(tl.float32), S, IEEE)
    if PREC == 2:
        return _mm(a, S16, IEEE) + _mm(a, (S - S16.to(tl.float32)).to(a.dtype), IEEE)
    return _mm(a, S16, IEEE)


@triton.jit
def _state_update(S, k, vnew, vd, vd16, decay_k, last, PREC: tl.constexpr, IEEE: tl.constexpr):
    """exp2(last) S + K^T (exp2(last - gam) v_new) for one part of the state (k: its columns of K).
    PREC 1 puts the decay on k (fp32 operands); otherwise it is folded into v_new (vd, BV wide,
    rather than k, dk wide), as 16-bit hi (vd16) + lo parts when PREC is 2."""
    if PREC == 1:
        return S * tl.exp2(last) + _mm(tl.trans(k.to(tl.float32) * decay_k[:, None]), vnew, IEEE)
    S = S * tl.exp2(last) + _mm(tl.trans(k), vd16, IEEE)
    if PREC == 2:
        S += _mm(tl.trans(k), (vd - vd16.to(tl.float32)).to(k.dtype), IEEE)
    return S


@triton.jit
def _gdr_fused_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, t_ptr, aqk_ptr, gam_ptr, s0_ptr, o_ptr, final_ptr,
    T, H, DK, DV, NCHUNK, SV, scale,
    HAS_S0: tl.constexpr, BK: tl.constexpr, BK2: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
    PREC: tl.constexpr, QK_PRE: tl.constexpr, T16: tl.constexpr, TMASK: tl.constexpr,
    QK_LOWER: tl.constexpr,
):  # fmt: skip
    """States and output in one sequential pass per (batch*head, dv-block), the state held in
    registers (fp32): for each chunk, v_new = T diag(beta) (V - diag(exp(gam)) K S) (so W and U are
    never formed), the output, then the state update. Nothing per chunk goes back to memory but o.

    dk columns [0, BK) are one tile; BK2 > 0 adds a second part, columns [BK, BK + BK2), with its
    own state rows (S2): dk 96 as 64 + 32 instead of one tile padded to 128, a quarter less of every
    k/q product, state register and k/q shared-memory tile. T16: T is stored in the input dtype and
    multiplies r as one 16-bit product (fla's precision). TMASK 1 reads T's lower 16x16 blocks (all
    that the solve writes, zeros above the diagonal included) through a block mask that is constant
    along 16 columns, so the load is vectorised; 0 masks element by element. QK_LOWER: the kkt
    kernel wrote the q.k matrix only in those blocks (LOWER), so it is read through the block mask."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs_l = tl.arange(0, 64)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    dtype = k_ptr.dtype.element_ty
    state_base = (bi * H + hi) * DK * DV
    state_off = state_base + offs_k[:, None] * DV + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + state_off, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    if BK2 > 0:
        offs_k2 = BK + tl.arange(0, BK2)
        mk2 = offs_k2 < DK
        state_off2 = state_base + offs_k2[:, None] * DV + offs_v[None, :]
        if HAS_S0:
            S2 = tl.load(s0_ptr + state_off2, mask=mk2[:, None] & mv[None, :], other=0.0).to(tl.float32)
        else:
            S2 = tl.zeros((BK2, BV), dtype=tl.float32)
    causal = offs_l[:, None] >= offs_l[None, :]
    blocks = (offs_l[:, None] // 16) >= (offs_l[None, :] // 16)
    if TMASK == 1:
        t_mask = blocks
    else:
        t_mask = causal
    for c in range(NCHUNK):
        t_idx = c * 64 + offs_l
        mt = t_idx < T
        row = (bi * T + t_idx[:, None]) * H + hi
        m_lv = mt[:, None] & mv[None, :]
        k = tl.load(k_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        q = tl.load(q_ptr + row * DK + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        if BK2 > 0:
            k2 = tl.load(k_ptr + row * DK + offs_k2[None, :], mask=mt[:, None] & mk2[None, :], other=0.0)
            q2 = tl.load(q_ptr + row * DK + offs_k2[None, :], mask=mt[:, None] & mk2[None, :], other=0.0)
        v_rows = (
            bi * T + t_idx[:, None]
        ) * SV + hi * DV  # v's token stride SV: a column block is read in place
        v = tl.load(v_ptr + v_rows + offs_v[None, :], mask=m_lv, other=0.0)  # (64, BV)
        if QK_PRE:  # from the kkt kernel: no scan in this loop
            gam = tl.load(gam_ptr + ((bi * H + hi) * NCHUNK + c) * 64 + offs_l)
            last = tl.load(gam_ptr + ((bi * H + hi) * NCHUNK + c) * 64 + 63)
        else:
            gl = tl.load(g_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32)
            gl = gl * 1.4426950408889634
            gam = tl.cumsum(gl, axis=0)  # log2-decay from the chunk start, inclusive
            last = tl.sum(gl, axis=0)
        beta = tl.load(beta_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32)
        tm = tl.load(
            t_ptr + ((bi * H + hi) * NCHUNK + c) * 4096 + offs_l[:, None] * 64 + offs_l[None, :],
            mask=t_mask,
            other=0.0,
        )  # (64, 64) = (I + A)^-1, lower triangular (blocks above the diagonal are never written)
        S16 = S.to(dtype)
        ks = _state_dot(k, S, S16, PREC, IEEE)
        if BK2 > 0:
            S2_16 = S2.to(dtype)
            ks += _state_dot(k2, S2, S2_16, PREC, IEEE)
        r = beta[:, None] * (v.to(tl.float32) - tl.exp2(gam)[:, None] * ks)
        if T16:
            vnew = _mm(tm, r.to(dtype), IEEE)
        else:
            vnew = _mm(tm.to(tl.float32), r, IEEE)  # (64, BV)
        # The output reads the state in the input dtype, as the split path's stored states.
        if QK_PRE:  # the causal q.k matrix from the parallel kkt kernel (fewer registers here)
            qk_ptrs = aqk_ptr + ((bi * H + hi) * NCHUNK + c) * 4096 + offs_l[:, None] * 64 + offs_l[None, :]
            if QK_LOWER:
                qk = tl.load(qk_ptrs, mask=blocks, other=0.0)
            else:
                qk = tl.load(qk_ptrs)
        else:
            qk = _mm(q, tl.trans(k), IEEE)
            if BK2 > 0:
                qk += _mm(q2, tl.trans(k2), IEEE)
            qk = tl.where(causal, qk * tl.exp2(tl.where(causal, gam[:, None] - gam[None, :], 0.0)), 0.0)
        qs = _mm(q, S16, IEEE)
        if BK2 > 0:
            qs += _mm(q2, S2_16, IEEE)
        o = tl.exp2(gam)[:, None] * qs + _mm(qk.to(dtype), vnew.to(dtype), IEEE)
        tl.store(o_ptr + row * DV + offs_v[None, :], (o * scale).to(o_ptr.dtype.element_ty), mask=m_lv)
        decay_k = tl.exp2(last - gam)
        vd = vnew * decay_k[:, None]
        vd16 = vd.to(dtype)
        S = _state_update(S, k, vnew, vd, vd16, decay_k, last, PREC, IEEE)
        if BK2 > 0:
            S2 = _state_update(S2, k2, vnew, vd, vd16, decay_k, last, PREC, IEEE)
    tl.store(final_ptr + state_off, S, mask=mk[:, None] & mv[None, :])
    if BK2 > 0:
        tl.store(final_ptr + state_off2, S2, mask=mk2[:, None] & mv[None, :])


def _k_split(dk: int, split: bool) -> tuple[int, int]:
    """(BK, BK2) of the fused kernel: one power-of-two tile covering dk, or, with `split` and a dk
    that is no power of two, the largest power of two below it plus a second power-of-two tile for
    the rest when the two together are narrower than one padded tile (96 -> 64 + 32; 112 would be
    64 + 64 = 128, no gain). Tiles narrower than 16 are not valid tensor-core operands."""
    bk = max(16, triton.next_power_of_2(dk))
    lo = bk // 2
    rest = triton.next_power_of_2(max(1, dk - lo))
    if not split or dk == bk or lo < 16 or rest < 16 or lo + rest >= bk:
        return bk, 0
    return lo, rest


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
    config: GdrLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`intermediate_dtype` (private knob for the benchmark): run the split path with this dtype for
    W, U, v_new and the entering states (default there: fp32 for fp32 inputs, else the input dtype).
    `config` replaces `launch_config`'s choice (the benchmark and the variant tests pass their own)."""
    check_delta_inputs(q, k, v, g, beta, initial_state, per_channel=False)
    del chunk_size  # the kernels use CHUNK = 64; the result does not depend on it
    b, t, h, dk = q.shape
    dv = v.shape[3]
    q, k, v, g, beta, scale, ieee, nchunk, BK = chunk_operands(q, k, v, g, beta, scale, strided_v=True)
    inter = intermediate_dtype or (torch.float32 if v.dtype == torch.float32 else v.dtype)
    cfg = config if config is not None else launch_config(q.device, tuple(q.shape), q.dtype)

    def bv(key: str) -> int:
        return min(getattr(cfg, key), max(16, triton.next_power_of_2(dv)))

    dev = v.device
    fused = bool(cfg.fused) and intermediate_dtype is None
    prec = int(cfg.fu_prec)
    a_buf = torch.empty((b * h * nchunk, CHUNK, CHUNK), device=dev, dtype=torch.float32)
    # T in the input dtype (`fu_t16`: half the bytes, one 16-bit product; fla's precision).
    t16 = fused and bool(cfg.fu_t16)
    t_buf = torch.empty_like(a_buf, dtype=v.dtype if t16 else torch.float32)
    qk_pre = fused and bool(cfg.qk_pre)
    aqk = torch.empty((b * h * nchunk, CHUNK, CHUNK), device=dev, dtype=v.dtype) if qk_pre else a_buf
    gam = torch.empty((b * h * nchunk * CHUNK,), device=dev, dtype=torch.float32) if qk_pre else a_buf
    lower = bool(cfg.kkt_lower)
    _gdr_kkt_kernel[(nchunk, b * h)](
        k, g, beta, a_buf, q, aqk, gam, t, h, dk, nchunk,
        BK=BK, IEEE=ieee, HAS_QK=qk_pre, LOWER=lower, num_warps=4,
    )  # fmt: skip
    _gdr_solve_kernel[(b * h * nchunk,)](a_buf, t_buf, num_warps=cfg.solve_warps)
    if fused:
        o, final, s0 = state_buffers(v, dk, initial_state)
        fu_bv = fused_bv(dv, b * h, dev) if cfg.fu_bv == 0 else bv("fu_bv")
        fu_bv = fu_bv if (ieee or cfg.narrow) else max(64, fu_bv)
        bk1, bk2 = _k_split(dk, bool(cfg.fu_ksplit))
        _gdr_fused_kernel[(triton.cdiv(dv, fu_bv), b * h)](
            q, k, v, g, beta, t_buf, aqk, gam, s0, o, final, t, h, dk, dv, nchunk, v.stride(1), float(scale),
            HAS_S0=initial_state is not None, BK=bk1, BK2=bk2, BV=fu_bv, IEEE=ieee, PREC=prec,
            QK_PRE=qk_pre, T16=t16, TMASK=cfg.fu_tmask, QK_LOWER=lower,
            num_warps=cfg.fu_warps, num_stages=cfg.fu_stages,
        )  # fmt: skip
        return o, final
    w = torch.empty((b, t, h, dk), device=dev, dtype=inter)
    u = torch.empty((b, t, h, dv), device=dev, dtype=inter)
    vnew = torch.empty((b, t, h, dv), device=dev, dtype=inter)
    states = torch.empty((b, h, nchunk, dk, dv), device=dev, dtype=inter)
    o, final, s0 = state_buffers(v, dk, initial_state)
    _gdr_wu_kernel[(nchunk, b * h)](
        k, v, g, beta, t_buf, w, u, t, h, dk, dv, nchunk, v.stride(1),
        BK=BK, BV=bv("u_bv"), IEEE=ieee, num_warps=cfg.prep_warps,
    )  # fmt: skip
    _gdr_states_kernel[(triton.cdiv(dv, bv("st_bv")), b * h)](
        k, g, w, u, s0, states, vnew, final, t, h, dk, dv, nchunk,
        HAS_S0=initial_state is not None, BK=BK, BV=bv("st_bv"), IEEE=ieee,
        num_warps=cfg.st_warps, num_stages=cfg.st_stages,
    )  # fmt: skip
    # 16-bit output dots with BV=32 hit an illegal memory access on an H100 under Triton 3.6
    # (NOTES.md); 64 is the narrowest width seen working there, so narrower dv is masked.
    out_bv = bv("out_bv") if ieee else max(64, bv("out_bv"))
    _gdr_output_kernel[(nchunk, b * h, triton.cdiv(dv, out_bv))](
        q, k, g, vnew, states, o, t, h, dk, dv, nchunk, float(scale),
        BK=BK, BV=out_bv, IEEE=ieee, num_warps=cfg.out_warps,
    )  # fmt: skip
    return o, final
