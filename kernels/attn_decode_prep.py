"""`attn_decode_prep(qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf, ...)`: an attention layer's
one-token work between its fused q|k|v projection and the attention core, for the decode engine
(model/decode/engine.py), with the roundings of the model's T == 1 path.

QK-norm ("full": one RMSNorm over all heads, "head": per head, "none"), rotate-half RoPE of the first R
channels of each head (cos, sin: (R,) fp32 at this position, as `hybrid_agent.model.layers.rope_cos_sin`
gives them), k and v written into the cache buffers (B, Hkv, M, Dh) at slot `pos` (a (1,) int64 on the
device) and `pos_buf[pos] = pos`. Per row (a batch whose rows have different lengths): `pos` (B,), cos
and sin (B, R), each row rotated at its own position and written at its own slot. Returns q (B, H, Dh)
in qkv's dtype. One launch instead of the ~19 small kernels of the model's arithmetic (norms, the
rotation's slices / cats / products, three index copies). `attn_decode_prep_ref` is the definition;
Triton on CUDA (kernels/triton_attn_decode_prep.py).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_attn_prep, check_prep_positions
from hybrid_agent.kernels.rms_norm import rms_norm_ref


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """model.layers.rotate for x (B, H, Dh) and cos/sin (R,) or (B, R) (kernels/ imports nothing of ours)."""
    R = cos.shape[-1]
    if cos.dim() == 2:  # per row: (B, 1, R) against the heads
        cos, sin = cos[:, None], sin[:, None]
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
    """The model's arithmetic (Attention.prep's QK-norm and RoPE, the engine's cache writes); inputs
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
    if pos.numel() > 1:  # per row: row b's entries at its own slot pos[b]
        rows = torch.arange(B, device=k_buf.device)
        k_buf[rows, :, pos] = k.to(k_buf.dtype)  # (B, Hkv, Dh)
        v_buf[rows, :, pos] = v.to(v_buf.dtype)
    else:
        k_buf.index_copy_(2, pos, k[:, :, None].to(k_buf.dtype))
        v_buf.index_copy_(2, pos, v[:, :, None].to(v_buf.dtype))
    pos_buf.index_copy_(0, pos, pos)  # slot p holds position p, whichever row wrote it
    return q


def attn_decode_prep(
    qkv: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, pos: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
    pos_buf: torch.Tensor, *, H: int, Hkv: int, Dh: int, eps: float, qk_norm: str,
) -> torch.Tensor:  # fmt: skip
    check_attn_prep(
        qkv, q_w, k_w, k_buf, v_buf, pos_buf, H, Hkv, Dh, 0 if cos is None else cos.shape[-1], qk_norm
    )
    check_prep_positions(qkv.shape[0], pos, cos, sin)
    kw = dict(H=H, Hkv=Hkv, Dh=Dh, eps=eps, qk_norm=qk_norm)
    args = (qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf)
    if use_triton(qkv):
        from hybrid_agent.kernels.triton_attn_decode_prep import attn_decode_prep_triton

        return attn_decode_prep_triton(*args, **kw)  # type: ignore[arg-type]
    return attn_decode_prep_ref(*args, **kw)  # type: ignore[arg-type]
