"""One-token Kimi delta rule (KDA decode); the recurrence of kernels/kda.py `chunk_kda`.

    S <- diag(exp(g)) S ;  S <- S + k beta (v - S^T k)^T ;  o = scale S^T q

state (b,h,dk,dv) fp32, updated in place; q, k (b,h,dk) L2-normalised by the caller; v (b,h,dv);
g (b,h,dk) the log-decay per key channel; beta (b,h). Returns o (b,h,dv) in v's dtype.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_delta_step_inputs
from hybrid_agent.kernels.gated_delta_rule_step import delta_rule_step


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
    check_delta_step_inputs(state, q, k, v, g, beta, per_channel=True)
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
    """One decode step; updates `state` in place and returns o (b,h,dv)."""
    if use_triton(state):
        from hybrid_agent.kernels.triton_kda_step import kda_step_triton

        return kda_step_triton(state, q, k, v, g, beta, scale=scale)
    return kda_step_ref(state, q, k, v, g, beta, scale=scale)
