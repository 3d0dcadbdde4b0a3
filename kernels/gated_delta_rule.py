"""Chunked gated delta rule (Gated DeltaNet, Yang, Kautz & Hatamizadeh 2024) with initial/final state.

Glossary: q, k (b,t,h,dk), already L2-normalised by the caller; v (b,t,h,dv); g (b,t,h) log-decay <= 0
(the gate alpha_t = exp(g_t)); beta (b,t,h) the write strength in (0,1), or (0,2) when negative
eigenvalues are allowed. The state is key-first, S (b,h,dk,dv) fp32:

    S_t = exp(g_t) S_{t-1} + k_t beta_t (v_t - exp(g_t) S_{t-1}^T k_t)^T
    o_t = scale S_t^T q_t                                   (scale defaults to dk ** -0.5)

Chunked form (the WY / UT-transform of DeltaNet, with the gate folded in). Inside a chunk of length L
starting from state S_0, with gam_i = g_1 + ... + g_i (cumulative log-decay from the chunk's start),
the per-token writes u_i = beta_i (v_i - exp(g_i) S_{i-1}^T k_i) satisfy a unit lower-triangular system

    (I + A) U = beta V - diag(beta exp(gam)) K S_0,  A_ij = beta_i exp(gam_i - gam_j) k_i.k_j  (j < i)

so U = Ub - W S_0 with Ub = (I+A)^-1 beta V and W = (I+A)^-1 diag(beta exp(gam)) K: two triangular
solves per chunk that do not depend on S_0, then one small matmul per chunk on the sequential path:

    o_i   = scale (exp(gam_i) q_i^T S_0 + sum_{j<=i} exp(gam_i - gam_j) (q_i.k_j) u_j)
    S_end = exp(gam_L) S_0 + sum_j exp(gam_L - gam_j) k_j u_j^T

All arithmetic is fp32. Padding the tail with k = v = q = 0, g = 0, beta = 0 writes nothing and decays
nothing, so any t works and the final state is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_delta_inputs


def to_chunks(a: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(b, t, h, ...) -> (b, h, c, L, ...) in fp32: time cut in c chunks of L = chunk_size, the last one
    padded with zeros (the chunked delta rules here and in kernels/kda.py)."""
    b, t, h = a.shape[:3]
    pad = (-t) % chunk_size
    a = F.pad(a.to(torch.float32), (0, 0) * (a.dim() - 3) + (0, 0, 0, pad))
    return a.view(b, (t + pad) // chunk_size, chunk_size, h, *a.shape[3:]).transpose(1, 3).transpose(2, 3)


def chunk_gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: chunked gated delta rule in fp32 torch. Returns (o in v's dtype, final_state fp32)."""
    check_delta_inputs(q, k, v, g, beta, initial_state, per_channel=False)
    b, t, h, dk = q.shape
    dv = v.shape[3]
    scale = dk**-0.5 if scale is None else scale
    L = chunk_size
    pad = (-t) % L
    c = (t + pad) // L
    f32 = torch.float32

    def chunks(a: torch.Tensor) -> torch.Tensor:  # (b, t, h, ...) -> (b, h, c, L, ...), fp32
        return to_chunks(a, L)

    qc, kc, vc = chunks(q), chunks(k), chunks(v)  # (b, h, c, L, dk|dv)
    gc, bc = chunks(g), chunks(beta)  # (b, h, c, L)
    gam = gc.cumsum(-1)  # (b, h, c, L)

    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    seg = (gam.unsqueeze(-1) - gam.unsqueeze(-2)).masked_fill(~lower, float("-inf"))  # (b,h,c,i,j)
    decay = seg.exp()  # exp(gam_i - gam_j) for j <= i, else 0

    kk = kc @ kc.transpose(-1, -2)  # (b, h, c, L, L)
    eye = torch.eye(L, dtype=f32, device=q.device)
    system = eye + (bc.unsqueeze(-1) * kk * decay).tril(-1)  # I + A, unit lower triangular
    rhs = torch.cat([bc.unsqueeze(-1) * vc, (bc * gam.exp()).unsqueeze(-1) * kc], dim=-1)  # (b,h,c,L,dv+dk)
    sol = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    Ub, W = sol[..., :dv], sol[..., dv:]  # (b,h,c,L,dv), (b,h,c,L,dk)

    qk = (qc @ kc.transpose(-1, -2)) * decay  # (b, h, c, L, L) causal, diagonal included
    q_in = qc * gam.exp().unsqueeze(-1)  # reads of the entering state
    k_out = kc * (gam[..., -1:] - gam).exp().unsqueeze(-1)  # writes, decayed to the chunk's end
    chunk_decay = gam[..., -1].exp()  # (b, h, c)

    if initial_state is None:
        state = q.new_zeros((b, h, dk, dv), dtype=f32)
    else:
        state = initial_state.to(f32).clone()
    out = torch.empty(b, h, c, L, dv, dtype=f32, device=q.device)
    for ci in range(c):
        u = Ub[:, :, ci] - W[:, :, ci] @ state  # (b, h, L, dv)
        out[:, :, ci] = q_in[:, :, ci] @ state + qk[:, :, ci] @ u
        state = chunk_decay[:, :, ci, None, None] * state + k_out[:, :, ci].transpose(-1, -2) @ u
    o = (out * scale).permute(0, 2, 3, 1, 4).reshape(b, c * L, h, dv)[:, :t]  # (b, t, h, dv)
    return o.to(v.dtype), state


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule over a sequence: (o (b,t,h,dv) in v's dtype, final_state (b,h,dk,dv) fp32)."""
    if use_triton(v):
        from hybrid_agent.kernels.triton_gated_delta_rule import chunk_gated_delta_rule_triton

        return chunk_gated_delta_rule_triton(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size
        )
    return chunk_gated_delta_rule_ref(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size
    )
