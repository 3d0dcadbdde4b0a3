"""Triton one-token SSM state update, same contract as `hybrid_agent.kernels.ssm_step.ssm_step_ref`.

One program per (batch*head, p-block): it reads its (p-block, n) slice of the fp32 state once,
decays and writes it in place, and reduces against C in registers: the state is read and written
exactly once, which is the floor for this memory-bound op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_ssm_step_inputs


@triton.jit
def _ssm_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
    H, G, P, N,
    HAS_D: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // (H // G)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp = offs_p < P
    mn = offs_n < N
    s_off = (bi * H + hi) * P * N + offs_p[:, None] * N + offs_n[None, :]
    m = mp[:, None] & mn[None, :]
    s = tl.load(state_ptr + s_off, mask=m, other=0.0)
    x = tl.load(x_ptr + (bi * H + hi) * P + offs_p, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bi * H + hi).to(tl.float32)
    a = tl.load(A_ptr + hi).to(tl.float32)
    b = tl.load(B_ptr + (bi * G + gi) * N + offs_n, mask=mn, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + (bi * G + gi) * N + offs_n, mask=mn, other=0.0).to(tl.float32)
    s = s * tl.exp(dt * a) + (dt * x)[:, None] * b[None, :]
    tl.store(state_ptr + s_off, s, mask=m)
    y = tl.sum(s * c[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + hi).to(tl.float32) * x
    tl.store(y_ptr + (bi * H + hi) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mp)


def ssm_step_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    check_ssm_step_inputs(state, x, dt, A, B, C, D)
    if not state.is_contiguous():  # a packed copy, written back: the same in-place contract as the reference
        packed = state.contiguous()
        y = ssm_step_triton(packed, x, dt, A, B, C, D=D)
        state.copy_(packed)
        return y
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
    A32 = A.to(torch.float32).contiguous()
    Dv = D.to(torch.float32).contiguous() if D is not None else A32
    y = torch.empty_like(x)
    BN = triton.next_power_of_2(n)
    BP = min(triton.next_power_of_2(p), max(1, 4096 // BN))  # ~4K state elements per program
    _ssm_step_kernel[(b * h, triton.cdiv(p, BP))](
        state, x, dt, A32, B, C, Dv, y, h, g, p, n, HAS_D=D is not None, BP=BP, BN=BN, num_warps=4
    )
    return y
