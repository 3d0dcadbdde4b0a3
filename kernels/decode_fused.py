"""Fused one-token ops for the decode engine (model/engine.py): each replaces a run of small kernels
of the model's T == 1 path with one launch, with the same roundings as that path.

- `gdn_decode_prep(proj, conv_state, conv_w, conv_b, A_log, dt_bias, ...)`: Gated DeltaNet's work
  between its (fused) input projection and the recurrent step: the causal-conv step over the q/k/v
  channels (state shifted in place) with SiLU, the L2 norm of q and k, q/k repeated to the value
  heads, beta = sigmoid(b) (x2 with negative eigenvalues) and g = -exp(A_log) softplus(a + dt_bias).
  `proj` (B, N) holds [q | k | v] (the conv channels, in the conv weight's order) in its first
  2*Hk*Dk + Hv*Dv columns, and a, b at columns a_off and b_off (Hv each). Returns q, k (B, Hv, Dk),
  v (B, Hv, Dv) in proj's dtype, g and beta (B, Hv) fp32: the inputs of `gated_delta_rule_step`.
- `residual_rms_norm(x, y, w_y, w_out, eps)`: x <- x + (rms_norm(y) w_y if w_y is given, else y),
  in place (x's dtype, as `x + ...` rounds), and returns rms_norm(x) w_out (or None): the residual
  add of one sub-layer fused with the norm in front of the next one (pre-norm) or behind this one
  (post-norm).
- `silu_mul(gu)`: gu (B, 2F) = [gate | up] -> silu(gate) * up (B, F), rounded like
  `F.silu(gate) * up` (silu rounded to the dtype, then the product).
The `*_ref` functions are the definitions (torch, the model's own arithmetic); Triton on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._dispatch import use_triton
from kernels.causal_conv1d import causal_conv1d_step_ref
from kernels.errors import KernelInputError
from kernels.rms_norm import rms_norm_ref

GdnPrep = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _l2(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """model.gated_deltanet.l2_normalize (kernels/ imports nothing of ours)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def check_gdn_prep(proj: torch.Tensor, conv_state: torch.Tensor, Hk: int, Dk: int, Hv: int, Dv: int,
                   a_off: int, b_off: int) -> int:  # fmt: skip
    C = 2 * Hk * Dk + Hv * Dv
    if proj.dim() != 2 or proj.shape[1] < max(C, a_off + Hv, b_off + Hv) or Hv % Hk:
        raise KernelInputError(
            f"gdn_decode_prep: proj {tuple(proj.shape)} too narrow for the layout, or Hv % Hk"
        )
    if (
        conv_state.dim() != 3
        or conv_state.shape[:2] != (proj.shape[0], C)
        or conv_state.dtype != torch.float32
    ):
        raise KernelInputError(
            f"gdn_decode_prep: conv_state must be fp32 (B, {C}, W-1), got {tuple(conv_state.shape)}"
        )
    return C


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
        from kernels.triton_decode_fused import gdn_decode_prep_triton

        return gdn_decode_prep_triton(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]
    return gdn_decode_prep_ref(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]


def residual_rms_norm_ref(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if y.shape != x.shape:
        raise KernelInputError(f"residual_rms_norm: y {tuple(y.shape)} must have x's shape {tuple(x.shape)}")
    x.copy_(x + (y if w_y is None else rms_norm_ref(y, w_y, eps)))
    return None if w_out is None else rms_norm_ref(x, w_out, eps)


def residual_rms_norm(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if use_triton(x):
        from kernels.triton_decode_fused import residual_rms_norm_triton

        return residual_rms_norm_triton(x, y, w_y, w_out, eps)
    return residual_rms_norm_ref(x, y, w_y, w_out, eps)


def silu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    if use_triton(gu):
        from kernels.triton_decode_fused import silu_mul_triton

        return silu_mul_triton(gu)
    return silu_mul_ref(gu)
