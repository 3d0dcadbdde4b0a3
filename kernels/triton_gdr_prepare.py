"""Triton: the per-chunk WY preparation of the chunked gated delta rule (see gated_delta_rule.py).

For each chunk of 64 tokens and each (batch, head), independently of the state:

1. `_gdr_kkt_kernel` (4 warps, one tensor-core product): A = [beta_i exp(gam_i - gam_j) k_i.k_j]_{j<i}
   (and, for the fused path's `qk_pre` option, the causal q.k attention matrix of the chunk).
2. `_gdr_solve_kernel` (1 warp): T = (I + A)^-1 (stored in the dtype of its buffer: fp32, or the
   input dtype when the fused kernel reads it only as a 16-bit operand). Forward substitution on the
   four 16x16 diagonal blocks, reading each row of A from memory (so no cross-thread extraction),
   then the off-diagonal blocks from block products. One warp, because the substitution's small
   reductions are then warp shuffles instead of barriers; with 4 warps inside one fused kernel it
   measured 9x slower than fla at 4k tokens (kernels/NOTES.md).
3. `_gdr_wu_kernel` (4 warps, split path only): W = T diag(beta exp(gam)) K and U = T diag(beta) V.
   The fused path (triton_gated_delta_rule.py) never forms W and U.

Forward substitution rather than a power series: with highly correlated keys the powers of A grow
like binomial coefficients and a series cancels catastrophically; substitution does not.

The host side both chunked launches share (this one and kernels/triton_kda.py, whose decay is per key
channel): `chunk_operands` (the prologue), `state_buffers` (o and the fp32 states) and `fused_bv`
(the sequential kernel's dv-block).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.triton_common import dot as _mm

CHUNK = 64


class ChunkOperands(NamedTuple):
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    scale: float
    ieee: bool  # exact fp32 products: fp32 inputs, or the CPU interpreter (its 16-bit dot is wrong)
    nchunk: int
    bk: int  # dk as one power-of-two tile, at least 16 (a tensor-core operand)


def chunk_operands(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    *,
    strided_v: bool = False,
) -> ChunkOperands:
    """The prologue of a chunked launch, for checked (b, t, h, ...) inputs: contiguous operands, q and
    k in v's dtype (one operand dtype for the products), the default scale dk ** -0.5. `strided_v`
    (kernels that read v at its token stride, v.stride(1)): v stays where it is when its heads are
    packed within a token and its tokens one stride apart, as a column block of a wider projection
    (Gated DeltaNet's v in the conv's q|k|v output), instead of a packed copy."""
    t, dk = q.shape[1], q.shape[3]
    scale = dk**-0.5 if scale is None else scale
    keep_v = strided_v and _token_rows(v)
    q, k, g, beta = (a.contiguous() for a in (q, k, g, beta))
    v = v if keep_v else v.contiguous()
    k, q = k.to(v.dtype), q.to(v.dtype)
    ieee = v.dtype == torch.float32 or not v.is_cuda
    return ChunkOperands(
        q, k, v, g, beta, scale, ieee, triton.cdiv(t, CHUNK), max(16, triton.next_power_of_2(dk))
    )


def _token_rows(v: torch.Tensor) -> bool:
    """v (b, t, h, dv): each token's h * dv values packed, tokens at one stride (also across b)."""
    b, t, h, dv = v.shape
    packed = v.stride(3) == 1 and (h == 1 or v.stride(2) == dv)
    return packed and v.stride(1) >= h * dv and (b == 1 or v.stride(0) == t * v.stride(1))


def state_buffers(
    v: torch.Tensor, dk: int, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o like v, the fp32 final state (b, h, dk, dv), the fp32 entering state the kernels read): with
    no initial state the final buffer stands in for it (HAS_S0 off: never read)."""
    b, _, h, dv = v.shape
    o = torch.empty((b, v.shape[1], h, dv), device=v.device, dtype=v.dtype)  # packed, whatever v's strides
    final = torch.empty((b, h, dk, dv), device=v.device, dtype=torch.float32)
    s0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    return o, final, s0


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def fused_bv(dv: int, bh: int, dev: torch.device) -> int:
    """The sequential kernel's dv-block by grid size: 32 if the (dv-blocks x batch*head) grid then fits
    in one wave of the GPU's multiprocessors (one program per SM: the kernel's shared memory allows
    no second), else 64 (128-wide state blocks spill). Narrow blocks spread a batch-1 call over more
    SMs; past one wave they only add rounds."""
    sms = _sm_count(dev.index or 0) if dev.type == "cuda" else 132
    cap = max(16, triton.next_power_of_2(dv))
    width = 32 if triton.cdiv(dv, 32) * bh <= sms else 64
    return min(width, cap)


@triton.jit
def _chunk_gates(g_ptr, beta_ptr, bi, T, H, hi, c):
    """(cumulative log2-decay from the chunk start, beta) for the 64 tokens of chunk c."""
    t_idx = c * 64 + tl.arange(0, 64)
    mt = t_idx < T
    g = tl.load(g_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + (bi * T + t_idx) * H + hi, mask=mt, other=0.0).to(tl.float32)
    return tl.cumsum(g * 1.4426950408889634, axis=0), beta


@triton.jit
def _gdr_kkt_kernel(
    k_ptr, g_ptr, beta_ptr, a_ptr, q_ptr, aqk_ptr, gam_ptr,
    T, H, DK, NCHUNK,
    BK: tl.constexpr, IEEE: tl.constexpr, HAS_QK: tl.constexpr, LOWER: tl.constexpr,
):  # fmt: skip
    """A (strictly lower, fp32); with HAS_QK also the chunk's causal attention matrix
    [q_i.k_j exp(gam_i - gam_j)]_{j<=i} in aqk's dtype and the cumulative log2-decays gam (fp32,
    contiguous per head), so the sequential kernel forms neither. LOWER: both matrices are stored
    only in the 16x16 blocks on and below the diagonal (the solve reads no other, and the fused
    kernel reads q.k through the same block mask): 6 of 16 blocks of zeros not written."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs = tl.arange(0, 64)
    offs_k = tl.arange(0, BK)
    t_idx = c * 64 + offs
    mt = t_idx < T
    k = tl.load(
        k_ptr + ((bi * T + t_idx[:, None]) * H + hi) * DK + offs_k[None, :],
        mask=mt[:, None] & (offs_k[None, :] < DK),
        other=0.0,
    )
    gam, beta = _chunk_gates(g_ptr, beta_ptr, bi, T, H, hi, c)
    strict = offs[:, None] > offs[None, :]
    decay = tl.exp2(tl.where(strict, gam[:, None] - gam[None, :], 0.0))
    a = tl.where(strict, beta[:, None] * _mm(k, tl.trans(k), IEEE) * decay, 0.0)
    base = ((bi * H + hi) * NCHUNK + c) * 4096
    blocks = (offs[:, None] // 16) >= (offs[None, :] // 16)  # constant along 16 columns: vectorised
    if LOWER:
        tl.store(a_ptr + base + offs[:, None] * 64 + offs[None, :], a, mask=blocks)
    else:
        tl.store(a_ptr + base + offs[:, None] * 64 + offs[None, :], a)
    if HAS_QK:
        q = tl.load(
            q_ptr + ((bi * T + t_idx[:, None]) * H + hi) * DK + offs_k[None, :],
            mask=mt[:, None] & (offs_k[None, :] < DK),
            other=0.0,
        )
        causal = offs[:, None] >= offs[None, :]
        qk = _mm(q, tl.trans(k), IEEE) * tl.exp2(tl.where(causal, gam[:, None] - gam[None, :], 0.0))
        qk = tl.where(causal, qk, 0.0)
        qk = qk.to(aqk_ptr.dtype.element_ty)
        if LOWER:
            tl.store(aqk_ptr + base + offs[:, None] * 64 + offs[None, :], qk, mask=blocks)
        else:
            tl.store(aqk_ptr + base + offs[:, None] * 64 + offs[None, :], qk)
        tl.store(gam_ptr + ((bi * H + hi) * NCHUNK + c) * 64 + offs, gam)


@triton.jit
def _inv_diag16(a_blk_ptr):
    """(I + A_b)^-1 for the strictly lower part of the 16x16 block at a_blk_ptr (row stride 64)."""
    r16 = tl.arange(0, 16)
    rows = r16[:, None]
    cols = r16[None, :]
    t = (rows == cols).to(tl.float32)
    for r in tl.static_range(1, 16):
        a_r = tl.load(a_blk_ptr + r * 64 + r16, mask=r16 < r, other=0.0)  # row r, columns j < r
        new = -tl.sum(a_r[:, None] * t, axis=0)  # rows j < r of t are final
        t = tl.where(rows == r, new[None, :] + (cols == r).to(tl.float32), t)
    return t


@triton.jit
def _blk(ptr, i: tl.constexpr, j: tl.constexpr):
    r16 = tl.arange(0, 16)
    return tl.load(ptr + (i * 16 + r16[:, None]) * 64 + j * 16 + r16[None, :])


@triton.jit
def _put(ptr, val, i: tl.constexpr, j: tl.constexpr):
    r16 = tl.arange(0, 16)
    tl.store(ptr + (i * 16 + r16[:, None]) * 64 + j * 16 + r16[None, :], val.to(ptr.dtype.element_ty))


@triton.jit
def _mmx(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _gdr_solve_kernel(a_ptr, t_ptr):
    base = tl.program_id(0).to(tl.int64) * 4096
    a = a_ptr + base
    d0 = _inv_diag16(a)
    d1 = _inv_diag16(a + 16 * 64 + 16)
    d2 = _inv_diag16(a + 32 * 64 + 32)
    d3 = _inv_diag16(a + 48 * 64 + 48)
    a10 = _blk(a, 1, 0)
    a20 = _blk(a, 2, 0)
    a21 = _blk(a, 2, 1)
    a30 = _blk(a, 3, 0)
    a31 = _blk(a, 3, 1)
    a32 = _blk(a, 3, 2)
    # Block inverse: [[M11, 0], [M21, M22]]^-1 = [[M11^-1, 0], [-M22^-1 M21 M11^-1, M22^-1]], twice.
    x10 = -_mmx(_mmx(d1, a10), d0)
    x32 = -_mmx(_mmx(d3, a32), d2)
    p20 = _mmx(a20, d0) + _mmx(a21, x10)
    p21 = _mmx(a21, d1)
    p30 = _mmx(a30, d0) + _mmx(a31, x10)
    p31 = _mmx(a31, d1)
    t = t_ptr + base
    _put(t, d0, 0, 0)
    _put(t, x10, 1, 0)
    _put(t, d1, 1, 1)
    _put(t, -_mmx(d2, p20), 2, 0)
    _put(t, -_mmx(d2, p21), 2, 1)
    _put(t, d2, 2, 2)
    _put(t, -(_mmx(x32, p20) + _mmx(d3, p30)), 3, 0)
    _put(t, -(_mmx(x32, p21) + _mmx(d3, p31)), 3, 1)
    _put(t, x32, 3, 2)
    _put(t, d3, 3, 3)


@triton.jit
def _gdr_wu_kernel(
    k_ptr, v_ptr, g_ptr, beta_ptr, t_ptr, w_ptr, u_ptr,
    T, H, DK, DV, NCHUNK, SV,
    BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    offs = tl.arange(0, 64)
    t_idx = c * 64 + offs
    mt = t_idx < T
    base = ((bi * H + hi) * NCHUNK + c) * 4096
    lower = offs[:, None] >= offs[None, :]
    tm = tl.where(
        lower, tl.load(t_ptr + base + offs[:, None] * 64 + offs[None, :]), 0.0
    )  # upper never written
    gam, beta = _chunk_gates(g_ptr, beta_ptr, bi, T, H, hi, c)
    row = (bi * T + t_idx[:, None]) * H + hi
    offs_k = tl.arange(0, BK)
    mk = mt[:, None] & (offs_k[None, :] < DK)
    k = tl.load(k_ptr + row * DK + offs_k[None, :], mask=mk, other=0.0).to(tl.float32)
    w = _mm(tm, k * (beta * tl.exp2(gam))[:, None], IEEE)
    tl.store(w_ptr + row * DK + offs_k[None, :], w.to(w_ptr.dtype.element_ty), mask=mk)
    for v0 in range(0, DV, BV):
        offs_v = v0 + tl.arange(0, BV)
        mv = mt[:, None] & (offs_v[None, :] < DV)
        v_rows = (bi * T + t_idx[:, None]) * SV + hi * DV  # v's token stride SV
        v = tl.load(v_ptr + v_rows + offs_v[None, :], mask=mv, other=0.0).to(tl.float32)
        u = _mm(tm, v * beta[:, None], IEEE)
        tl.store(u_ptr + row * DV + offs_v[None, :], u.to(u_ptr.dtype.element_ty), mask=mv)
