"""RMSNorm and gated RMSNorm (the output norm of Mamba-2 and Gated DeltaNet).

Arithmetic in fp32, output in x's dtype, normalised over the last dimension (or over groups of
`group_size` channels of it):

    rms_norm(x)           = x / sqrt(mean(x^2) + eps) * weight

gated_rms_norm has the two orders the checkpoints use:

- `norm_before_gate=True` (the default; Gated DeltaNet: fla's FusedRMSNormGated, transformers'
  OlmoHybridRMSNormGated / Qwen3NextRMSNormGated):  y = rms_norm(x) * weight * silu(z)
- `norm_before_gate=False` (Mamba-2, Bamba, Nemotron-H, Falcon-H1: transformers' MambaRMSNormGated):
  y = rms_norm_grouped(x * silu(z)) * weight, with `group_size` = d_inner // n_groups.

`z=None` means no gate. `group_size=None` means one group over the whole last dimension.
Rounding: transformers rounds the normalised x to the input dtype before multiplying by weight; we
round once at the end. In fp32 the two agree exactly; in bf16 they differ by at most one rounding.
Qwen3-Next's plain RMSNorm uses (1 + weight): callers pass `1 + weight` (the kernel knows one form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._dispatch import backend
from kernels.errors import KernelInputError


def _normalise(xf: torch.Tensor, eps: float, group_size: int | None) -> torch.Tensor:
    d = xf.shape[-1]
    gs = d if group_size is None else group_size
    if gs <= 0 or d % gs != 0:
        raise KernelInputError(f"rms_norm: group_size={group_size} must divide the last dimension {d}")
    xg = xf.view(*xf.shape[:-1], d // gs, gs)
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    return xg.view(xf.shape)


def _check_weight(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.shape != (x.shape[-1],):
        raise KernelInputError(f"rms_norm: weight must be ({x.shape[-1]},), got {tuple(weight.shape)}")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check_weight(x, weight)
    return (_normalise(x.float(), eps, None) * weight.float()).to(x.dtype)


def gated_rms_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    _check_weight(x, weight)
    if z is not None and z.shape != x.shape:
        raise KernelInputError(
            f"gated_rms_norm: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}"
        )
    xf = x.float()
    gate = None if z is None else F.silu(z.float())
    if norm_before_gate:
        y = _normalise(xf, eps, group_size) * weight.float()
        if gate is not None:
            y = y * gate
    else:
        if gate is not None:
            xf = xf * gate
        y = _normalise(xf, eps, group_size) * weight.float()
    return y.to(x.dtype)


def _fp32(*ts: torch.Tensor | None) -> bool:
    return all(t is None or t.dtype == torch.float32 for t in ts)


# The `*_cpu` versions: for fp32 tensors the reference's `.float()` / `.to()` / `.view()` calls are
# no-ops that still cost a dispatch each (a decode step of the default model calls the norms 17 times);
# these run the same products and sums in the same order without them (tested equal to the ref).
def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check_weight(x, weight)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def gated_rms_norm_cpu(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    _check_weight(x, weight)
    if z is not None and z.shape != x.shape:
        raise KernelInputError(
            f"gated_rms_norm: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}"
        )
    d = x.shape[-1]
    if group_size is not None and group_size != d:
        return gated_rms_norm_ref(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)
    if norm_before_gate or z is None:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
        return y if z is None else y * F.silu(z)
    xg = x * F.silu(z)
    return xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps) * weight


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension; fp32 arithmetic, x's dtype out."""
    impl = backend(x)
    if impl == "triton":
        from kernels.triton_rms_norm import gated_rms_norm_triton

        return gated_rms_norm_triton(x, None, weight, eps)
    if impl == "cpu" and _fp32(x, weight):
        return rms_norm_cpu(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    """Gated RMSNorm; see the module doc for the two orders (GDN default, Mamba-2 norm_before_gate=False)."""
    impl = backend(x)
    if impl == "triton":
        from kernels.triton_rms_norm import gated_rms_norm_triton

        return gated_rms_norm_triton(
            x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate
        )
    if impl == "cpu" and _fp32(x, z, weight):
        return gated_rms_norm_cpu(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)
    return gated_rms_norm_ref(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)
