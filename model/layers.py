"""Small building blocks shared by the mixers: RMSNorm, the SwiGLU MLP, rotary embeddings.

Parameter names follow transformers (`weight`, `gate_proj`, `up_proj`, `down_proj`) so checkpoint
adapters map weights by name. Norms go through `hybrid_agent.kernels.rms_norm` (fp32 arithmetic, input dtype
out).

The one-token fp32 CPU path of decode (`HybridLM.forward` with T == 1 on the CPU, kernels mode `auto`):
each module's `step_cpu` computes what its `forward` computes with the reference kernels, bit for bit,
in fewer torch calls (no kernel dispatch or input checks, no sub-module calls, in-place intermediates,
an RMSNorm of five calls instead of ~10). Decode of a small model on a 2-core CPU is mostly per-call
overhead: ~300 torch calls a token against ~4 ms of weight reads (bench/cpu_decode.py).
tests/model/test_model_decode_cpu.py and test_model_decode_fast.py hold it to the reference.
"""

from __future__ import annotations

import math
import struct

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import gated_rms_norm, rms_norm
from hybrid_agent.kernels._dispatch import backend
from hybrid_agent.model.config import HybridConfig
from torch import Tensor, nn

# The switch of the one-token CPU path (see the module docstring), so bench/cpu_decode.py can time
# both paths in one process.
CPU_DECODE = True


def cpu_decode_applies(x: Tensor) -> bool:
    """Whether `x` (B, 1, D) takes the one-token CPU path: fp32 on the CPU, kernels mode `auto`, no
    autograd (the path writes into its own intermediates)."""
    return (
        CPU_DECODE
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and backend(x) == "cpu"
    )


class RMSNorm(nn.Module):
    """`weight` (dim,), initialised to ones; y = x / rms(x) * weight over the last axis."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == x.shape[-1] and cpu_decode_applies(x):  # one token: what `step_cpu` computes
            return rms_norm_cpu(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def step_cpu(self, x: Tensor) -> Tensor:
        """`forward` for one fp32 token on the CPU (`cpu_decode_applies`); see `rms_norm_cpu`. Also
        what `forward` computes for such a token, so callers of the modules (DecodeEngine's CPU step)
        get the same numbers as the one-token path."""
        return rms_norm_cpu(x, self.weight, self.eps)


def rms_norm_cpu(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`hybrid_agent.kernels.rms_norm` of fp32 `x` on the CPU, bit for bit, in few torch calls. One row
    (decode): the sum of squares by torch's own reduction (the one the reference's `mean` runs), the scale in
    Python, two multiplies: five calls where torch's `rms_norm` makes about ten (pow, mean, add,
    rsqrt, multiplies, no-op casts), each costing microseconds on a small CPU. The scale's
    arithmetic (divide, add eps, sqrt, reciprocal) is done in double and rounded to fp32 after each
    operation, which gives exactly the fp32 results (binary64 has more than twice binary32's
    precision). More rows: torch's `rms_norm` (the reference's operations)."""
    d = x.shape[-1]
    if x.numel() != d:
        return torch.rms_norm(x, (d,), weight, eps)
    mean = _f32(float((x * x).sum()) / d)  # mean(x^2) as the reference's sum, then divide
    scale = _f32(1.0 / _f32(math.sqrt(_f32(mean + _f32(eps)))))  # rsqrt(mean + eps)
    return torch.mul(x, scale).mul_(weight)  # (..., d): x * scale * weight, the reference's order


_F32 = struct.Struct("f")


def _f32(v: float) -> float:
    """`v` rounded to the nearest fp32 value."""
    return _F32.unpack(_F32.pack(v))[0]


class GatedRMSNorm(nn.Module):
    """`weight` (dim,); the output norm of Mamba-2 and Gated DeltaNet, gated by silu(z).

    `norm_before_gate=False` (Mamba-2): norm(x * silu(z)) over groups of `group_size` channels;
    `True` (Gated DeltaNet): norm(x) * silu(z).
    """

    def __init__(
        self, dim: int, eps: float, *, group_size: int | None = None, norm_before_gate: bool
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return gated_rms_norm(
            x, z, self.weight, self.eps, group_size=self.group_size, norm_before_gate=self.norm_before_gate
        )


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)); or with `activation="relu2"` (Nemotron-H)
    down_proj(relu(up_proj(x))^2), which has no gate_proj."""

    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        hidden, bias = cfg.mlp.hidden_dim, cfg.mlp.bias
        assert hidden is not None
        self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=bias) if cfg.mlp.activation == "swiglu" else None
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is None:
            return self.down_proj(F.relu(self.up_proj(x)).square())  # (B, T, D)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, D)

    def step_cpu(self, x: Tensor) -> Tensor:
        """`forward` without the sub-modules' calls; the gate's activation and product in place."""
        if self.gate_proj is None:
            h = F.relu(F.linear(x, self.up_proj.weight, self.up_proj.bias), inplace=True)
            return F.linear(h.square_(), self.down_proj.weight, self.down_proj.bias)  # (B, T, D)
        g = F.silu(F.linear(x, self.gate_proj.weight, self.gate_proj.bias), inplace=True)
        g.mul_(F.linear(x, self.up_proj.weight, self.up_proj.bias))  # (B, T, hidden)
        return F.linear(g, self.down_proj.weight, self.down_proj.bias)  # (B, T, D)


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
    out = torch.cat((xr * cos + rotated * sin, rest), dim=-1)  # (B, T, H, Dh)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def apply_rope(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotate `x` (B, T, H, Dh) by its absolute `positions` (T,); transformers' rotate-half layout.

    Partial RoPE: with R = 2 * len(inv_freq) < Dh only the first R channels of each head are rotated.
    Callers rotating q and k at the same positions compute `rope_cos_sin` once and call `rotate`."""
    return rotate(x, *rope_cos_sin(positions, inv_freq))
