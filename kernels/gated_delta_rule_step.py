"""One-token gated delta rule (Gated DeltaNet decode); the recurrence of `chunk_gated_delta_rule`.

    S <- exp(g) S ;  S <- S + k beta (v - S^T k)^T ;  o = scale S^T q

state (b,h,dk,dv) fp32, updated in place; q, k (b,h,dk) L2-normalised by the caller; v (b,h,dv);
g, beta (b,h). Returns o (b,h,dv) in v's dtype.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_delta_step_inputs


def gated_delta_rule_step_ref(
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
    return delta_rule_step(state, q, k, v, g.to(torch.float32)[..., None, None], beta, scale)


def delta_rule_step(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
) -> torch.Tensor:
    """The step both delta rules share (this op's and kernels/kda_step.py's): the state decays by
    exp(log_decay), which broadcasts against (b, h, dk, dv) (one value per head here, per key channel
    there), then the delta-rule write and the read, in fp32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    f32 = torch.float32
    qf, kf, vf = q.to(f32), k.to(f32), v.to(f32)
    s = state * log_decay.exp()  # (b, h, dk, dv)
    pred = torch.einsum("bhkv,bhk->bhv", s, kf)  # what the state already says for k
    delta = beta.to(f32)[..., None] * (vf - pred)  # (b, h, dv)
    s = s + kf.unsqueeze(-1) * delta.unsqueeze(-2)
    state.copy_(s)
    return (scale * torch.einsum("bhkv,bhk->bhv", s, qf)).to(v.dtype)


def gated_delta_rule_step(
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
        from hybrid_agent.kernels.triton_gated_delta_rule_step import gated_delta_rule_step_triton

        return gated_delta_rule_step_triton(state, q, k, v, g, beta, scale=scale)
    return gated_delta_rule_step_ref(state, q, k, v, g, beta, scale=scale)
