"""Chunked Kimi delta rule (KDA, Kimi Linear): the gated delta rule with a decay per key channel.

Glossary: q, k (b,t,h,dk), already L2-normalised by the caller; v (b,t,h,dv); g (b,t,h,dk) log-decay
<= 0 per key channel (the scalar-per-head form is kernels/gated_delta_rule.py); beta (b,t,h) the write
strength. The state is key-first, S (b,h,dk,dv) fp32, and D_t = diag(exp(g_t)) decays its rows:

    S_t = D_t S_{t-1} + k_t beta_t (v_t - (D_t S_{t-1})^T k_t)^T
    o_t = scale S_t^T q_t                                   (scale defaults to dk ** -0.5)

Chunked form: the same UT transform as the scalar gate, with the decay moved inside the key products.
In a chunk of length L from state S_0, with gam_i = g_1 + ... + g_i (per channel), the writes
u_i = beta_i (v_i - (D_i S_{i-1})^T k_i) solve a unit lower-triangular system

    (I + A) U = beta V - diag(beta) (K * exp(gam)) S_0,   A_ij = beta_i sum_c k_ic k_jc exp(gam_ic - gam_jc)

for j < i, and then

    o_i   = scale ((q_i * exp(gam_i))^T S_0 + sum_{j<=i} [sum_c q_ic k_jc exp(gam_ic - gam_jc)] u_j)
    S_end = diag(exp(gam_L)) S_0 + sum_j (k_j * exp(gam_L - gam_j)) u_j^T

Only differences gam_i - gam_j with j <= i are exponentiated (each <= 0), so nothing overflows however
strong the decay. The pairwise decays are (L, L, dk) per chunk and head, so they are built one chunk at a
time. All arithmetic is fp32; padding the tail with zeros (g = 0, beta = 0) writes and decays nothing.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_delta_inputs
from hybrid_agent.kernels.gated_delta_rule import to_chunks


def chunk_kda_ref(
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
    """The definition: chunked KDA in fp32 torch. Returns (o in v's dtype, final_state fp32)."""
    check_delta_inputs(q, k, v, g, beta, initial_state, per_channel=True)
    b, t, h, dk = q.shape
    dv = v.shape[3]
    scale = dk**-0.5 if scale is None else scale
    L = chunk_size
    pad = (-t) % L
    c = (t + pad) // L
    f32 = torch.float32

    def chunks(a: torch.Tensor) -> torch.Tensor:  # (b, t, h, ...) -> (b, h, c, L, ...), fp32
        return to_chunks(a, L)

    qc, kc, vc, gc = chunks(q), chunks(k), chunks(v), chunks(g)  # (b, h, c, L, dk|dv)
    bc = chunks(beta)  # (b, h, c, L)
    gam = gc.cumsum(-2)  # (b, h, c, L, dk)
    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(L, dtype=f32, device=q.device)

    if initial_state is None:
        state = q.new_zeros((b, h, dk, dv), dtype=f32)
    else:
        state = initial_state.to(f32).clone()
    out = torch.empty(b, h, c, L, dv, dtype=f32, device=q.device)
    for ci in range(c):
        gi, ki, qi, bi = gam[:, :, ci], kc[:, :, ci], qc[:, :, ci], bc[:, :, ci]  # (b, h, L, dk), (b, h, L)
        seg = gi.unsqueeze(-2) - gi.unsqueeze(-3)  # (b, h, i, j, dk): gam_i - gam_j
        decay = seg.masked_fill(~lower[..., None], float("-inf")).exp()  # 0 above the diagonal
        kk = torch.einsum("bhic,bhjc,bhijc->bhij", ki, ki, decay)  # decayed k_i . k_j
        qk = torch.einsum("bhic,bhjc,bhijc->bhij", qi, ki, decay)  # decayed q_i . k_j, j <= i
        system = eye + (bi.unsqueeze(-1) * kk).tril(-1)  # I + A, unit lower triangular
        rhs = torch.cat([bi.unsqueeze(-1) * vc[:, :, ci], bi.unsqueeze(-1) * ki * gi.exp()], dim=-1)
        sol = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        u = sol[..., :dv] - sol[..., dv:] @ state  # (b, h, L, dv)
        out[:, :, ci] = (qi * gi.exp()) @ state + qk @ u
        k_out = ki * (gi[..., -1:, :] - gi).exp()  # writes, decayed to the chunk's end
        state = gi[..., -1, :].exp().unsqueeze(-1) * state + k_out.transpose(-1, -2) @ u
    o = (out * scale).permute(0, 2, 3, 1, 4).reshape(b, c * L, h, dv)[:, :t]  # (b, t, h, dv)
    return o.to(v.dtype), state


def chunk_kda(
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
    """KDA over a sequence: (o (b,t,h,dv) in v's dtype, final_state (b,h,dk,dv) fp32)."""
    if use_triton(v):
        from hybrid_agent.kernels.triton_kda import chunk_kda_triton

        return chunk_kda_triton(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size
        )
    return chunk_kda_ref(q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size)
