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
    """Apply the rotation `rope_cos_sin` gave to `x` (B, T, H, Dh); see `apply_rope`."""
    R = cos.shape[-1]
    xf = x if x.dtype == torch.float32 else x.float()
    xr, rest = xf[..., :R], xf[..., R:]  # (B, T, H, R), (B, T, H, Dh - R)
    x1, x2 = xr.chunk(2, dim=-1)  # (B, T, H, R/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, T, H, R)
    out = xr * cos + rotated * sin  # (B, T, H, R)
    if rest.shape[-1]:  # partial RoPE: the rest of each head passes through
        out = torch.cat((out, rest), dim=-1)  # (B, T, H, Dh)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def apply_rope(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotate `x` (B, T, H, Dh) by its absolute `positions` (T,); transformers' rotate-half layout.

    Partial RoPE: with R = 2 * len(inv_freq) < Dh only the first R channels of each head are rotated.
    Callers rotating q and k at the same positions compute `rope_cos_sin` once and call `rotate`."""
    return rotate(x, *rope_cos_sin(positions, inv_freq))
