"""Triton one-token gated delta rule, same contract as `gated_delta_rule_step_ref`.

One program per (batch*head, dv-block) holds a (dk, dv-block) slice of the fp32 state: decay,
prediction S^T k, delta write and the read S^T q are fused, so the state is read and written once.
With PER_CHANNEL the decay is read per key channel (row c of the state scales by exp(g_c)): Kimi's
delta rule, kernels/triton_kda_step.py. No host synchronisation (the engine captures it in a graph).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import check_delta_step_inputs


@triton.jit
def _delta_step_kernel(
    state_ptr, q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, o_ptr,
    DK, DV, scale,
    BK: tl.constexpr, BV: tl.constexpr, PER_CHANNEL: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    s_off = bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    m = mk[:, None] & mv[None, :]
    s = tl.load(state_ptr + s_off, mask=m, other=0.0)
    q = tl.load(q_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + bh * DV + offs_v, mask=mv, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + bh).to(tl.float32)
    if PER_CHANNEL:  # row c (key channel c) decays by exp(g_c)
        s = s * tl.exp(tl.load(g_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(tl.float32))[:, None]
    else:
        s = s * tl.exp(tl.load(g_ptr + bh).to(tl.float32))
    pred = tl.sum(s * k[:, None], axis=0)  # (BV,) what the state already says for k
    s = s + k[:, None] * (beta * (v - pred))[None, :]
    tl.store(state_ptr + s_off, s, mask=m)
    o = tl.sum(s * q[:, None], axis=0) * scale
    tl.store(o_ptr + bh * DV + offs_v, o.to(o_ptr.dtype.element_ty), mask=mv)


def gated_delta_rule_step_triton(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    check_delta_step_inputs(state, q, k, v, g, beta, per_channel=False)
    return delta_step_triton(state, q, k, v, g, beta, scale, per_channel=False)


def delta_step_triton(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    *,
    per_channel: bool,
) -> torch.Tensor:
    """The launch for checked inputs: g (b, h), or (b, h, dk) with `per_channel`."""
    if not state.is_contiguous():  # a packed copy, written back: the same in-place contract as the reference
        packed = state.contiguous()
        o = delta_step_triton(packed, q, k, v, g, beta, scale, per_channel=per_channel)
        state.copy_(packed)
        return o
    b, h, dk = q.shape
    dv = v.shape[2]
    scale = dk**-0.5 if scale is None else scale
    q, k, v, g, beta = (a.contiguous() for a in (q, k, v, g, beta))
    o = torch.empty_like(v)
    BK = triton.next_power_of_2(dk)
    BV = min(triton.next_power_of_2(dv), max(1, 4096 // BK))
    _delta_step_kernel[(b * h, triton.cdiv(dv, BV))](
        state, q, k, v, g, beta, o, dk, dv, float(scale), BK=BK, BV=BV, PER_CHANNEL=per_channel, num_warps=4
    )
    return o
