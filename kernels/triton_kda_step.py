"""Triton one-token Kimi delta rule (KDA decode), same contract as `kda_step_ref`: the gated delta rule
step of kernels/triton_gated_delta_rule_step.py with the decay read per key channel (its PER_CHANNEL
kernel), so the state is read and written once and nothing reads the host.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels.checks import check_delta_step_inputs
from hybrid_agent.kernels.triton_gated_delta_rule_step import delta_step_triton


def kda_step_triton(
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
    return delta_step_triton(state, q, k, v, g, beta, scale, per_channel=True)
