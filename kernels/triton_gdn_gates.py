"""Triton version of kernels/gdn_gates.py (same contract; see that module's doc). One program per block
of tokens, all H heads of each token: a and b read once at their token strides, g and beta written
once (fp32, packed)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_gdn_gates


@triton.jit
def _gdn_gates_kernel(
    a_ptr, b_ptr, alog_ptr, dtb_ptr, g_ptr, beta_ptr,
    N, H, SA, SB,
    NEG: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    offs_h = tl.arange(0, BH)
    mh = offs_h < H
    m = (rows[:, None] < N) & mh[None, :]
    a = tl.load(a_ptr + rows[:, None] * SA + offs_h[None, :], mask=m, other=0.0).to(tl.float32)
    braw = tl.load(b_ptr + rows[:, None] * SB + offs_h[None, :], mask=m, other=0.0).to(tl.float32)
    z = a + tl.load(dtb_ptr + offs_h, mask=mh, other=0.0).to(tl.float32)[None, :]
    # softplus with torch's threshold (20); log(1 + e) as log(u) e / (u - 1), u = 1 + e rounded, which
    # keeps its accuracy where e is small (a plain log(1 + e) is 0 below e ~ 6e-8)
    e = tl.exp(tl.minimum(z, 20.0))
    u = 1.0 + e
    sp = tl.where(z > 20.0, z, tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0))))
    decay = tl.exp(tl.load(alog_ptr + offs_h, mask=mh, other=0.0).to(tl.float32))
    g = -decay[None, :] * sp
    beta = tl.sigmoid(braw)
    if NEG:
        beta = beta * 2.0
    out = rows[:, None] * H + offs_h[None, :]
    tl.store(g_ptr + out, g, mask=m)
    tl.store(beta_ptr + out, beta, mask=m)


def _token_rows(t: torch.Tensor) -> torch.Tensor:
    """t (B, T, H) as (B*T, H) rows of unit channel stride and one row stride, in place where it can."""
    if t.stride(2) == 1 or t.shape[2] == 1:
        try:
            return t.view(-1, t.shape[2])
        except RuntimeError:
            pass
    return t.contiguous().view(-1, t.shape[2])


def gdn_gates_triton(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    check_gdn_gates(a, b, A_log, dt_bias)
    B, T, H = a.shape
    g = torch.empty((B, T, H), device=a.device, dtype=torch.float32)
    beta = torch.empty_like(g)
    N = B * T
    if N == 0:
        return g, beta
    ar, br = _token_rows(a), _token_rows(b)
    BH = triton.next_power_of_2(H)
    BR = max(1, min(64, 2048 // BH))
    _gdn_gates_kernel[(triton.cdiv(N, BR),)](
        ar, br, A_log.contiguous(), dt_bias.contiguous(), g, beta, N, H, ar.stride(0), br.stride(0),
        NEG=allow_neg_eigval, BR=BR, BH=BH, num_warps=4,
    )  # fmt: skip
    return g, beta
