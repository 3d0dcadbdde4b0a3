"""`gdn_decode_prep(proj, conv_state, conv_w, conv_b, A_log, dt_bias, ...)`: Gated DeltaNet's one-token
work between its (fused) input projection and the recurrent step, as one launch for the decode engine
(model/decode/engine.py), with the roundings of the model's T == 1 path.

It does the causal-conv step over the q/k/v channels (state shifted in place) with SiLU, the L2 norm of
q and k, q/k repeated to the value heads, beta = sigmoid(b) (x2 with negative eigenvalues) and
g = -exp(A_log) softplus(a + dt_bias). `proj` (B, N) holds [q | k | v] (the conv channels, in the conv
weight's order) in its first 2*Hk*Dk + Hv*Dv columns, and a, b at columns a_off and b_off (Hv each).
Returns q, k (B, Hv, Dk), v (B, Hv, Dv) in proj's dtype, g and beta (B, Hv) fp32: the inputs of
`gated_delta_rule_step`. `gdn_decode_prep_ref` is the definition (torch, the model's arithmetic);
Triton on CUDA (kernels/triton_gdn_decode_prep.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_step_ref
from hybrid_agent.kernels.checks import GdnPrep, check_gdn_prep


def _l2(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """model.gated_deltanet.l2_normalize (kernels/ imports nothing of ours)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def gdn_decode_prep_ref(
    proj: torch.Tensor, conv_state: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None,
    A_log: torch.Tensor, dt_bias: torch.Tensor, *, Hk: int, Dk: int, Hv: int, Dv: int, a_off: int, b_off: int,
    allow_neg_eigval: bool,
) -> GdnPrep:  # fmt: skip
    C = check_gdn_prep(proj, conv_state, Hk, Dk, Hv, Dv, a_off, b_off)
    B = proj.shape[0]
    qkv = causal_conv1d_step_ref(proj[:, :C], conv_state, conv_w, conv_b)  # (B, C) proj's dtype
    q, k, v = qkv.split([Hk * Dk, Hk * Dk, Hv * Dv], dim=-1)
    q, k = _l2(q.reshape(B, Hk, Dk)), _l2(k.reshape(B, Hk, Dk))  # (B, Hk, Dk)
    if Hv != Hk:
        q, k = q.repeat_interleave(Hv // Hk, dim=1), k.repeat_interleave(Hv // Hk, dim=1)  # (B, Hv, Dk)
    beta = proj[:, b_off : b_off + Hv].float().sigmoid()  # (B, Hv)
    if allow_neg_eigval:
        beta = beta * 2.0
    g = -A_log.float().exp() * F.softplus(proj[:, a_off : a_off + Hv].float() + dt_bias.float())  # (B, Hv)
    return q, k, v.reshape(B, Hv, Dv), g, beta


def gdn_decode_prep(
    proj: torch.Tensor, conv_state: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None,
    A_log: torch.Tensor, dt_bias: torch.Tensor, *, Hk: int, Dk: int, Hv: int, Dv: int, a_off: int, b_off: int,
    allow_neg_eigval: bool,
) -> GdnPrep:  # fmt: skip
    kw = dict(Hk=Hk, Dk=Dk, Hv=Hv, Dv=Dv, a_off=a_off, b_off=b_off, allow_neg_eigval=allow_neg_eigval)
    if use_triton(proj):
        from hybrid_agent.kernels.triton_gdn_decode_prep import gdn_decode_prep_triton

        return gdn_decode_prep_triton(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]
    return gdn_decode_prep_ref(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]
