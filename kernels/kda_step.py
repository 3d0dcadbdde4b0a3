"""One-token Kimi delta rule (KDA decode); the recurrence of kernels/kda.py `chunk_kda`.

    S <- diag(exp(g)) S ;  S <- S + k beta (v - S^T k)^T ;  o = scale S^T q

state (b,h,dk,dv) fp32, updated in place; q, k (b,h,dk) L2-normalised by the caller; v (b,h,dv);
g (b,h,dk) the log-decay per key channel; beta (b,h). Returns o (b,h,dv) in v's dtype.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels.errors import KernelInputError
from hybrid_agent.kernels.gated_delta_rule_step import delta_rule_step


def check_kda_step_inputs(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
) -> None:
    op = "kda_step"
    if q.dim() != 3 or q.shape != k.shape or q.shape != g.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise KernelInputError(
            f"{op}: q, k, g must be (b, h, dk) and v (b, h, dv); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(g.shape)}, {tuple(v.shape)}"
        )
    b, h, dk = q.shape
    dv = v.shape[2]
    if beta.shape != (b, h):
        raise KernelInputError(f"{op}: beta must be (b, h) = {(b, h)}, got {tuple(beta.shape)}")
    if state.shape != (b, h, dk, dv) or state.dtype != torch.float32:
        raise KernelInputError(
            f"{op}: state must be fp32 (b, h, dk, dv) = {(b, h, dk, dv)}, "
            f"got {state.dtype} {tuple(state.shape)}"
        )


def kda_step_ref(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    check_kda_step_inputs(state, q, k, v, g, beta)
    # row c of the state (key channel c) decays by exp(g_c)
    return delta_rule_step(state, q, k, v, g.to(torch.float32).unsqueeze(-1), beta, scale)


def kda_step(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """One decode step; updates `state` in place and returns o (b,h,dv).

    Every device runs the torch reference for now (there is no Triton kernel of this op yet)."""
    return kda_step_ref(state, q, k, v, g, beta, scale=scale)
