"""Random inputs of the right shapes and ranges for the ops, and the error measure the tests use.

Shared by tests/kernels, the GPU tests and bench/gpu_kernels.py (like torch.testing: helpers for
checking, not part of any model path). Inputs are drawn from a seeded CPU generator, then moved, so
a seed means the same numbers on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def rel_err(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def make_ssd_inputs(
    b: int, t: int, h: int, g: int, p: int, n: int, seed: int, *,
    dtype: torch.dtype = torch.float32, with_D: bool = True, with_init: bool = False, device: str = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """x, dt (positive, ~0.3), A (negative), B, C, D, initial_state as ssd_scan takes them."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    x = rnd(b, t, h, p).to(device, dtype)
    dt = F.softplus(rnd(b, t, h) - 1.0).to(device, dtype)
    A = (-torch.rand(h, generator=gen) * 3 - 0.1).to(device)
    B = rnd(b, t, g, n).to(device, dtype)
    C = rnd(b, t, g, n).to(device, dtype)
    D = rnd(h).to(device) if with_D else None
    s0 = rnd(b, h, p, n).to(device) if with_init else None
    return x, dt, A, B, C, D, s0


def make_gdr_inputs(
    b: int, t: int, h: int, dk: int, dv: int, seed: int, *,
    dtype: torch.dtype = torch.float32, with_init: bool = False, neg_eig: bool = False, device: str = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """q, k (L2-normalised), v, g (log-decay <= 0), beta in (0,1) or (0,2), initial_state."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    q = F.normalize(rnd(b, t, h, dk), dim=-1).to(device, dtype)
    k = F.normalize(rnd(b, t, h, dk), dim=-1).to(device, dtype)
    v = rnd(b, t, h, dv).to(device, dtype)
    g = (-F.softplus(rnd(b, t, h)) * 0.5).to(device, dtype)
    beta = (torch.sigmoid(rnd(b, t, h)) * (2.0 if neg_eig else 1.0)).to(device, dtype)
    s0 = (rnd(b, h, dk, dv) * 0.5).to(device) if with_init else None
    return q, k, v, g, beta, s0


def make_kda_inputs(
    b: int, t: int, h: int, dk: int, dv: int, seed: int, *,
    dtype: torch.dtype = torch.float32, with_init: bool = False, strong: bool = False, device: str = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """q, k (L2-normalised) and v in `dtype`; g (b,t,h,dk) fp32 log-decay <= 0 per key channel
    (`strong`: down to exp(-20) a token on some channels, so a chunk's cumulative decay reaches the
    1000s), beta (b,t,h) fp32 in (0,1), initial_state fp32 (b,h,dk,dv), as chunk_kda takes them."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    q = F.normalize(rnd(b, t, h, dk), dim=-1).to(device, dtype)
    k = F.normalize(rnd(b, t, h, dk), dim=-1).to(device, dtype)
    v = rnd(b, t, h, dv).to(device, dtype)
    g = (-F.softplus(rnd(b, t, h, dk)) * (10.0 if strong else 0.5)).to(device)
    beta = torch.sigmoid(rnd(b, t, h)).to(device)
    s0 = (rnd(b, h, dk, dv) * 0.5).to(device) if with_init else None
    return q, k, v, g, beta, s0
