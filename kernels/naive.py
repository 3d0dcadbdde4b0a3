"""The recurrences written token by token: the shortest readable statement of each algorithm.

These are the test oracles (run in float64 by the tests) and the place to start reading; the chunked
references in ssd_scan.py, gated_delta_rule.py and kda.py must agree with them. Slow by design.
"""

from __future__ import annotations

import torch


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T ; y_t = S_t C_t + D x_t, in x's dtype throughout."""
    b, t, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # (b, t, h, n)
    n = B.shape[3]
    S = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x.dtype).clone()
    ys = []
    for i in range(t):
        S = (
            torch.exp(dt[:, i] * A)[..., None, None] * S
            + (dt[:, i, :, None] * x[:, i])[..., None] * Bh[:, i, :, None, :]
        )
        y = torch.einsum("bhpn,bhn->bhp", S, Ch[:, i])
        if D is not None:
            y = y + D[None, :, None] * x[:, i]
        ys.append(y)
    return torch.stack(ys, dim=1), S


def gated_delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = exp(g_t) S_{t-1} + k_t beta_t (v_t - exp(g_t) S_{t-1}^T k_t)^T ; o_t = scale S_t^T q_t.

    g is (b, t, h), one decay per head (Gated DeltaNet), or (b, t, h, dk), one per key channel, which
    decays row c of S by exp(g_t[c]) (KDA, kernels/kda.py)."""
    b, t, h, dk = q.shape
    dv = v.shape[3]
    scale = dk**-0.5 if scale is None else scale
    S = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype).clone()
    os = []
    for i in range(t):
        decay = torch.exp(g[:, i])  # (b, h) or (b, h, dk)
        S = (decay[..., None, None] if g.dim() == 3 else decay[..., None]) * S
        err = v[:, i] - torch.einsum("bhkv,bhk->bhv", S, k[:, i])
        S = S + k[:, i, :, :, None] * (beta[:, i, :, None] * err)[:, :, None, :]
        os.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, i]))
    return torch.stack(os, dim=1), S
