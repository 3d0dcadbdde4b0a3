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

import math
import struct

import torch
import torch.nn.functional as F
from hybrid_agent.kernels._cast import as_dtype, as_f32
from hybrid_agent.kernels._dispatch import backend
from hybrid_agent.kernels.checks import check_rms_gate, check_rms_weight, rms_group_size


def _normalise(xf: torch.Tensor, eps: float, group_size: int | None) -> torch.Tensor:
    d = xf.shape[-1]
    gs = rms_group_size(d, group_size)
    if gs == d:  # one group: no views needed (same sums)
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xg = xf.view(*xf.shape[:-1], d // gs, gs)
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    return xg.view(xf.shape)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    check_rms_weight(x, weight)
    return as_dtype(_normalise(as_f32(x), eps, None) * as_f32(weight), x.dtype)


def gated_rms_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    check_rms_weight(x, weight)
    check_rms_gate(x, z)
    xf = as_f32(x)
    # z packed: a strided z (a column block of a stacked projection) would take torch's scalar loop on the
    # CPU, which rounds silu differently from the vectorised one
    gate = None if z is None else F.silu(as_f32(z).contiguous())
    if norm_before_gate:
        y = _normalise(xf, eps, group_size) * as_f32(weight)
        if gate is not None:
            y = y * gate
    else:
        if gate is not None:
            xf = xf * gate
        y = _normalise(xf, eps, group_size) * as_f32(weight)
    return as_dtype(y, x.dtype)


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_ref` of one fp32 row on the CPU (decode), bit for bit, in five torch calls where the
    reference makes about ten (pow, mean, add, rsqrt, multiplies, no-op casts), each costing
    microseconds on a small CPU: the sum of squares by torch's own reduction (the one the reference's
    `mean` runs), the scale in Python, two multiplies. The scale's arithmetic (divide, add eps, sqrt,
    reciprocal) is done in double and rounded to fp32 after each operation, which gives exactly the
    fp32 results (binary64 has more than twice binary32's precision)."""
    check_rms_weight(x, weight)
    mean = _f32(float((x * x).sum()) / x.shape[-1])  # mean(x^2) as the reference's sum, then divide
    scale = _f32(1.0 / _f32(math.sqrt(_f32(mean + _f32(eps)))))  # rsqrt(mean + eps)
    return torch.mul(x, scale).mul_(weight)  # x * scale * weight, the reference's order


_F32 = struct.Struct("f")


def _f32(v: float) -> float:
    """`v` rounded to the nearest fp32 value."""
    return _F32.unpack(_F32.pack(v))[0]


def _one_cpu_row(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether `rms_norm_cpu` applies: one fp32 row, no autograd (it reads the sum into Python)."""
    if x.dtype != torch.float32 or x.numel() != x.shape[-1]:
        return False
    if not torch.is_grad_enabled():
        return True
    return not x.requires_grad and not any(t is not None and t.requires_grad for t in tensors)


def _cpu_gate(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor) -> bool:
    fp32 = z is not None and z.dtype == torch.float32 and weight.dtype == torch.float32
    return fp32 and _one_cpu_row(x, z, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension; fp32 arithmetic, x's dtype out."""
    impl = backend(x)
    if impl == "triton":
        from hybrid_agent.kernels.triton_rms_norm import gated_rms_norm_triton

        return gated_rms_norm_triton(x, None, weight, eps)
    if impl == "cpu" and weight.dtype == torch.float32 and _one_cpu_row(x, weight):
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
        from hybrid_agent.kernels.triton_rms_norm import gated_rms_norm_triton

        return gated_rms_norm_triton(
            x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate
        )
    one_group = group_size is None or group_size == x.shape[-1]
    if impl == "cpu" and one_group and not norm_before_gate and _cpu_gate(x, z, weight):
        check_rms_gate(x, z)  # decode: gate, then normalise
        return rms_norm_cpu(x * F.silu(z), weight, eps)
    return gated_rms_norm_ref(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)
