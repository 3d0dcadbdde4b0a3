"""SSD chunked scan: the Mamba-2 selective state-space recurrence over a whole sequence.

Glossary (Mamba-2 paper symbols): x input (b,t,h,p); dt step size Δ (b,t,h), already positive; A (h,)
negative scalar per head; B input projection and C output projection (b,t,g,n), shared by the h/g
consecutive heads of group g (head i reads group i // (h/g), as in mamba_ssm and transformers); D skip.

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T        (S: (p, n) per head, fp32)
    y_t = S_t C_t + D x_t

The reference uses the SSD block decomposition (Dao & Gu 2024, section 6): split time into chunks of
`chunk_size`; inside a chunk the output is a masked "attention" (C_i . B_j) exp(cum_i - cum_j) dt_j x_j;
across chunks only the (p, n) state travels, decayed by the chunk's total exp(sum dt A). Everything is
computed in fp32 whatever the input dtype. A sequence whose length is not a multiple of the chunk is
padded with dt = 0, which neither decays nor writes the state, so the final state stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_ssd_inputs


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: chunked SSD in fp32 torch. Returns (y in x's dtype, final_state fp32)."""
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g  # heads per group
    L = chunk_size
    pad = (-t) % L
    f32 = torch.float32
    xf = F.pad(x.to(f32), (0, 0, 0, 0, 0, pad))
    dtf = F.pad(dt.to(f32), (0, 0, 0, pad))  # dt = 0 on padding: no decay, no write
    Bf = F.pad(B.to(f32), (0, 0, 0, 0, 0, pad))
    Cf = F.pad(C.to(f32), (0, 0, 0, 0, 0, pad))
    c = (t + pad) // L

    xc = xf.view(b, c, L, g, r, p)  # (b, c, l, g, r, p)
    dtc = dtf.view(b, c, L, g, r)  # (b, c, l, g, r)
    Bc = Bf.view(b, c, L, g, n)  # (b, c, l, g, n)
    Cc = Cf.view(b, c, L, g, n)
    dA = dtc * A.to(f32).view(g, r)  # (b, c, l, g, r) log-decay per step
    cum = dA.cumsum(dim=2)  # (b, c, l, g, r) log-decay from chunk start to step i (inclusive)

    # 1) inside each chunk: y_i += sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j
    seg = cum.unsqueeze(3) - cum.unsqueeze(2)  # (b, c, i, j, g, r) = cum_i - cum_j
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = seg.masked_fill(~causal.view(1, 1, L, L, 1, 1), float("-inf"))  # -inf before exp: no overflow
    decay = seg.exp()  # (b, c, i, j, g, r)
    cb = torch.einsum("bcign,bcjgn->bcijg", Cc, Bc)  # (b, c, i, j, g)
    w = cb.unsqueeze(-1) * decay * dtc.unsqueeze(2)  # (b, c, i, j, g, r)
    y = torch.einsum("bcijgr,bcjgrp->bcigrp", w, xc)  # (b, c, l, g, r, p)

    # 2) what each chunk writes into the state, decayed to the chunk's end
    to_end = (cum[:, :, -1:] - cum).exp() * dtc  # (b, c, l, g, r)
    chunk_states = torch.einsum("bclgr,bclgrp,bclgn->bcgrpn", to_end, xc, Bc)  # (b, c, g, r, p, n)

    # 3) pass the state across chunks (sequential in c; only (p, n) per head travels)
    if initial_state is None:
        state = x.new_zeros((b, g, r, p, n), dtype=f32)
    else:
        state = initial_state.to(f32).reshape(b, g, r, p, n)
    chunk_decay = cum[:, :, -1].exp()  # (b, c, g, r)
    states_in = []
    for ci in range(c):
        states_in.append(state)
        state = chunk_decay[:, ci, :, :, None, None] * state + chunk_states[:, ci]
    prev = torch.stack(states_in, dim=1)  # (b, c, g, r, p, n) state entering each chunk

    # 4) read the entering state: y_i += exp(cum_i) S_prev C_i
    y = y + torch.einsum("bcgrpn,bcign,bcigr->bcigrp", prev, Cc, cum.exp())

    y = y.reshape(b, c * L, h, p)[:, :t]  # (b, t, h, p)
    if D is not None:
        y = y + D.to(f32).view(1, 1, h, 1) * xf[:, :t]
    return y.to(x.dtype), state.reshape(b, h, p, n)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD over a sequence: (y (b,t,h,p) in x's dtype, final_state (b,h,p,n) fp32). See module doc."""
    if use_triton(x):
        from hybrid_agent.kernels.triton_ssd_scan import (
            ssd_scan_triton,  # imported late: Triton only when used
        )

        return ssd_scan_triton(x, dt, A, B, C, D=D, initial_state=initial_state, chunk_size=chunk_size)
    return ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=initial_state, chunk_size=chunk_size)
