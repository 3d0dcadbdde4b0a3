"""Small building blocks shared by the mixers: RMSNorm, the gated RMSNorm, the SwiGLU MLP (RoPE is
model/rope.py).

Parameter names follow transformers (`weight`, `gate_proj`, `up_proj`, `down_proj`) so checkpoint
adapters map weights by name. Norms go through `hybrid_agent.kernels.rms_norm` (fp32 arithmetic, input
dtype out).

Decode of a small model on a 2-core CPU is mostly per-call overhead (~300 torch calls a token against
~4 ms of weight reads, bench/cpu_decode.py). Its one-token work goes through the kernels, whose CPU forms
(`*_cpu`, kernels mode `auto`; kernels/_dispatch.py) compute the reference's numbers bit for bit in fewer
torch calls; the modules multiply by their weights through `Ops.project` (F.linear) rather than their
sub-modules' calls. tests/model/test_model_decode_cpu.py and test_model_decode_fast.py hold the CPU
forms to the reference kernels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import gated_rms_norm, rms_norm
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.ops import Ops
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """`weight` (dim,), initialised to ones; y = x / rms(x) * weight over the last axis.

    `span` (a `TensorParallel`, model/parallel.py): the axis is split across the ranks (attention's
    QK-norm over all heads, `qk_norm="full"`), so the mean square is summed over them."""

    span: Any = None

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.span is not None and self.span.world > 1:
            xf = x.float()
            squares = self.span.all_reduce(xf.pow(2).sum(-1, keepdim=True))
            mean = squares / (xf.shape[-1] * self.span.world)
            return (xf * torch.rsqrt(mean + self.eps) * self.weight.float()).to(x.dtype)
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """`weight` (dim,); the output norm of Mamba-2 and Gated DeltaNet, gated by silu(z).

    `norm_before_gate=False` (Mamba-2): norm(x * silu(z)) over groups of `group_size` channels;
    `True` (Gated DeltaNet): norm(x) * silu(z).

    `span` (a `TensorParallel`, model/parallel.py) is set on a rank whose one group is split across the
    ranks (tensor-parallel Mamba-2 with a single group): the mean square is then summed over them.
    """

    span: Any = None

    def __init__(
        self, dim: int, eps: float, *, group_size: int | None = None, norm_before_gate: bool
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if self.span is not None and self.span.world > 1:
            return self._spanning(x, z)
        return gated_rms_norm(
            x, z, self.weight, self.eps, group_size=self.group_size, norm_before_gate=self.norm_before_gate
        )

    def _spanning(self, x: Tensor, z: Tensor) -> Tensor:
        """The one-group norm of a group spread over the ranks: each holds `x.shape[-1]` of its channels."""
        xf, gate = x.float(), F.silu(z.float())
        if not self.norm_before_gate:
            xf = xf * gate
        squares = self.span.all_reduce(xf.pow(2).sum(-1, keepdim=True))
        y = xf * torch.rsqrt(squares / (xf.shape[-1] * self.span.world) + self.eps) * self.weight.float()
        return (y * gate if self.norm_before_gate else y).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)); or with `activation="relu2"` (Nemotron-H)
    down_proj(relu(up_proj(x))^2), which has no gate_proj. `hidden` overrides `mlp.hidden_dim` (an MoE's
    shared expert, model/moe.py)."""

    def __init__(self, cfg: HybridConfig, hidden: int | None = None) -> None:
        super().__init__()
        hidden, bias = hidden or cfg.mlp.hidden_dim, cfg.mlp.bias
        assert hidden is not None
        self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=bias) if cfg.mlp.activation == "swiglu" else None
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=bias)

    def forward(self, x: Tensor, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        if self.gate_proj is None:
            h = F.relu(ops.project("up", x, (self.up_proj,))).square()  # (B, T, hidden)
        else:
            h = ops.gated(x, self.gate_proj, self.up_proj)  # (B, T, hidden)
        return ops.project("down", h, (self.down_proj,))  # (B, T, D)
