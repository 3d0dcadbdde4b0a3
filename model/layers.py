"""Small building blocks shared by the mixers: RMSNorm, the SwiGLU MLP, rotary embeddings.

Parameter names follow transformers (`weight`, `gate_proj`, `up_proj`, `down_proj`) so checkpoint
adapters map weights by name. Norms go through `hybrid_agent.kernels.rms_norm` (fp32 arithmetic, input dtype
out).

Decode of a small model on a 2-core CPU is mostly per-call overhead (~300 torch calls a token against
~4 ms of weight reads, bench/cpu_decode.py). Its one-token work goes through the kernels, whose CPU forms
(`*_cpu`, kernels mode `auto`; kernels/_dispatch.py) compute the reference's numbers bit for bit in fewer
torch calls; the modules call weights through F.linear rather than their sub-modules' calls.
`HybridLM.forward` adds the residuals in place for one token (`Block.step_cpu`), and attention's RoPE
values are shared by the layers of a step (`Attention.step_cpu`). tests/model/test_model_decode_cpu.py
and test_model_decode_fast.py hold them to the reference kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import gated_rms_norm, rms_norm
from hybrid_agent.kernels._dispatch import backend
from hybrid_agent.model.config import HybridConfig
from torch import Tensor, nn


def cpu_decode_applies(x: Tensor) -> bool:
    """Whether `x` (B, 1, D) takes the one-token CPU path: fp32 on the CPU, kernels mode `auto` (the CPU
    kernels; `HYBRID_AGENT_KERNELS=ref` turns it off), no autograd (the path writes into its own
    intermediates)."""
    return (
        x.dtype == torch.float32
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
        return rms_norm(x, self.weight, self.eps)


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
        # F.linear on the weights rather than the sub-modules' calls: the same numbers, and a decode
        # step of a small model on the CPU is mostly per-call overhead (bench/cpu_decode.py).
        up = F.linear(x, self.up_proj.weight, self.up_proj.bias)  # (B, T, hidden)
        if self.gate_proj is None:
            return F.linear(F.relu(up).square(), self.down_proj.weight, self.down_proj.bias)  # (B, T, D)
        g = F.silu(F.linear(x, self.gate_proj.weight, self.gate_proj.bias)) * up  # (B, T, hidden)
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
