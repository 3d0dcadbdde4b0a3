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
- `attn_decode_prep(qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf, ...)`: an attention layer's work
  between its fused q|k|v projection and the attention core: QK-norm ("full": one RMSNorm over all
  heads, "head": per head, "none"), rotate-half RoPE of the first R channels of each head (cos, sin:
  (R,) fp32 at this position, as `hybrid_agent.model.layers.rope_cos_sin` gives them), k and v written into
  the cache buffers (B, Hkv, M, Dh) at slot `pos` (a (1,) int64 on the device) and `pos_buf[pos] = pos`.
  Returns q (B, H, Dh) in qkv's dtype. One launch instead of the ~19 small kernels of the model's
  arithmetic (norms, the rotation's slices / cats / products, three index copies).
- `greedy_advance(logits, tok, pos, ids)`: the end of a greedy step on the device: tok (B, 1) <-
  argmax(logits (B, V)) (the first index of the maximum, a NaN counting as the maximum, as
  torch.argmax), pos (1,) += 1, ids[:, pos] <- tok. Two launches (block maxima, then one program)
  instead of torch's single-block argmax (23 us at V = 100,352 on the H100) and three small kernels.
The `*_ref` functions are the definitions (torch, the model's own arithmetic); Triton on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_step_ref
from hybrid_agent.kernels.checks import (
    GdnPrep,
    check_attn_prep,
    check_gdn_prep,
    check_greedy_advance,
    check_residual,
)
from hybrid_agent.kernels.rms_norm import rms_norm_ref


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
        from hybrid_agent.kernels.triton_decode_fused import gdn_decode_prep_triton

        return gdn_decode_prep_triton(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]
    return gdn_decode_prep_ref(proj, conv_state, conv_w, conv_b, A_log, dt_bias, **kw)  # type: ignore[arg-type]


def residual_rms_norm_ref(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    check_residual(x, y)
    x.copy_(x + (y if w_y is None else rms_norm_ref(y, w_y, eps)))
    return None if w_out is None else rms_norm_ref(x, w_out, eps)


def residual_rms_norm(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if use_triton(x):
        from hybrid_agent.kernels.triton_decode_fused import residual_rms_norm_triton

        return residual_rms_norm_triton(x, y, w_y, w_out, eps)
    return residual_rms_norm_ref(x, y, w_y, w_out, eps)


def silu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    if use_triton(gu):
        from hybrid_agent.kernels.triton_decode_fused import silu_mul_triton

        return silu_mul_triton(gu)
    return silu_mul_ref(gu)


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """model.layers.rotate for x (B, H, Dh) and cos/sin (R,) (kernels/ imports nothing of ours)."""
    R = cos.shape[-1]
    xf = x.float()
    xr, rest = xf[..., :R], xf[..., R:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((xr * cos + rotated * sin, rest), dim=-1).to(x.dtype)


def attn_decode_prep_ref(
    qkv: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, pos: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
    pos_buf: torch.Tensor, *, H: int, Hkv: int, Dh: int, eps: float, qk_norm: str,
) -> torch.Tensor:  # fmt: skip
    """The model's arithmetic (Attention.project's QK-norm and RoPE, the engine's cache writes); inputs
    as `check_attn_prep` allows."""
    B = qkv.shape[0]
    q, k = qkv[:, : H * Dh], qkv[:, H * Dh : (H + Hkv) * Dh]
    v = qkv[:, (H + Hkv) * Dh : (H + 2 * Hkv) * Dh]
    if qk_norm == "full":
        q, k = rms_norm_ref(q, q_w, eps), rms_norm_ref(k, k_w, eps)  # type: ignore[arg-type]
    q, k, v = q.reshape(B, H, Dh), k.reshape(B, Hkv, Dh), v.reshape(B, Hkv, Dh)
    if qk_norm == "head":
        q, k = rms_norm_ref(q, q_w, eps), rms_norm_ref(k, k_w, eps)  # type: ignore[arg-type]
    if cos is not None and sin is not None:
        q, k = _rotate_ref(q, cos, sin), _rotate_ref(k, cos, sin)
    k_buf.index_copy_(2, pos, k[:, :, None].to(k_buf.dtype))
    v_buf.index_copy_(2, pos, v[:, :, None].to(v_buf.dtype))
    pos_buf.index_copy_(0, pos, pos)
    return q


def attn_decode_prep(
    qkv: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, pos: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
    pos_buf: torch.Tensor, *, H: int, Hkv: int, Dh: int, eps: float, qk_norm: str,
) -> torch.Tensor:  # fmt: skip
    check_attn_prep(
        qkv, q_w, k_w, k_buf, v_buf, pos_buf, H, Hkv, Dh, 0 if cos is None else cos.shape[-1], qk_norm
    )
    kw = dict(H=H, Hkv=Hkv, Dh=Dh, eps=eps, qk_norm=qk_norm)
    args = (qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf)
    if use_triton(qkv):
        from hybrid_agent.kernels.triton_decode_fused import attn_decode_prep_triton

        return attn_decode_prep_triton(*args, **kw)  # type: ignore[arg-type]
    return attn_decode_prep_ref(*args, **kw)  # type: ignore[arg-type]


def greedy_advance_ref(logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor) -> None:
    """The engine's greedy step end (model/engine.py `_advance`), in torch."""
    tok.copy_(logits.argmax(-1, keepdim=True))
    pos.add_(1)
    ids.index_copy_(1, pos, tok)


def greedy_advance(logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor) -> None:
    check_greedy_advance(logits, tok, ids)
    if use_triton(logits):
        from hybrid_agent.kernels.triton_decode_fused import greedy_advance_triton

        greedy_advance_triton(logits, tok, pos, ids)
        return
    greedy_advance_ref(logits, tok, pos, ids)
