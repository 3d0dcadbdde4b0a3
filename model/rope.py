"""Rotary position embeddings (transformers' rotate-half layout): the inverse frequencies, cos and sin
at absolute positions, and the rotation."""

from __future__ import annotations

import torch
from torch import Tensor


def rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (Dh/2,)


def rope_cos_sin(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin (1, T, 1, R) of the rotation angles at `positions` (T,), for `rotate`."""
    freqs = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]  # (T, R/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, R)
    return emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]  # (1, T, 1, R) each


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply the rotation `rope_cos_sin` gave to `x` (B, T, H, Dh); see `apply_rope`. fp32 arithmetic,
    x's dtype out (fp64 input is rotated in fp32 too)."""
    if x.shape[1] > 1 and x.dtype in _HALVES and not _recorded(x):
        return _rotate_halves(x, cos, sin)
    R = cos.shape[-1]
    xf = x if x.dtype == torch.float32 else x.float()
    xr, rest = xf[..., :R], xf[..., R:]  # (B, T, H, R), (B, T, H, Dh - R)
    x1, x2 = xr.chunk(2, dim=-1)  # (B, T, H, R/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, T, H, R)
    out = xr * cos + rotated * sin  # (B, T, H, R)
    if rest.shape[-1]:  # partial RoPE: the rest of each head passes through
        out = torch.cat((out, rest), dim=-1)  # (B, T, H, Dh)
    return out if out.dtype == x.dtype else out.to(x.dtype)


_HALVES = (torch.float32, torch.bfloat16, torch.float16)


def _recorded(x: Tensor) -> bool:
    """Whether autograd records ops on x (`out=` writes are not differentiable)."""
    return torch.is_grad_enabled() and x.requires_grad


def _rotate_halves(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`rotate` for several tokens, the same numbers in fewer passes over them: each half of the rotated
    channels is two products and one sum written straight into x's dtype, where the one-token form
    casts x to fp32, builds the rotated copy (a negation and a concatenation), multiplies, adds and
    casts back. A 16-bit x times the fp32 table is computed in fp32 exactly as x.float() times it,
    (-b) * s is -(b * s) and a + -(b * s) is a - b * s in IEEE arithmetic, and a sum in fp32 rounded
    into x's dtype on the store is the fp32 sum then cast: the results are bit for bit the one-token
    form's (tests/model/test_prefill_copies.py). The one-token form makes fewer torch calls, which is
    what decode on a small CPU pays for."""
    R = cos.shape[-1]
    h = R // 2
    if cos.dtype != torch.float32:  # a 16-bit table (a model cast whole) is read in fp32, as there
        cos, sin = cos.float(), sin.float()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # (B, T, H, Dh)
    x1, x2 = x[..., :h], x[..., h:R]  # (B, T, H, R/2) each
    torch.sub(x1 * cos[..., :h], x2 * sin[..., :h], out=out[..., :h])
    torch.add(x2 * cos[..., h:], x1 * sin[..., h:], out=out[..., h:R])
    if x.shape[-1] > R:  # partial RoPE: the rest of each head passes through
        out[..., R:] = x[..., R:]
    return out


def apply_rope(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotate `x` (B, T, H, Dh) by its absolute `positions` (T,); transformers' rotate-half layout.

    Partial RoPE: with R = 2 * len(inv_freq) < Dh only the first R channels of each head are rotated.
    Callers rotating q and k at the same positions compute `rope_cos_sin` once and call `rotate`."""
    return rotate(x, *rope_cos_sin(positions, inv_freq))
