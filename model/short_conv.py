"""The gated short convolution (LFM2's `conv` layers): a depthwise causal conv between two gates.

    B, C, x = split(in_proj(h), 3)        each (B, T, D)
    u = B * x                             the input gate
    y = causal_depthwise_conv(u)          width W (LFM2's `conv_L_cache`), no activation
    out = out_proj(C * y)                 the output gate

No SSM and no attention: the layer's whole state is the conv window, the last W - 1 values of u
(`conv` (B, D, W - 1), fp32, oldest first), as Mamba-2's `conv` holds the last inputs of its conv.
T == 1 runs kernels.causal_conv1d_step (decode), T > 1 kernels.causal_conv1d (prefill), both with
`activation=None`; they read and write the same state, so chunked and token-by-token prefill agree.

Weights: in_proj (3D, D) with B, C, x in that order; conv1d, a depthwise nn.Conv1d (D, 1, W);
out_proj (D, D). All with a bias when `short_conv.bias` is on (LFM2's `conv_bias`, which sets all three).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels import causal_conv1d, causal_conv1d_step
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class ShortConv(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        s, d = cfg.short_conv, cfg.d_model
        c = s.channels or d  # fewer on a tensor-parallel rank (model/parallel.py)
        self.d_model = c
        self.in_proj = nn.Linear(d, 3 * c, bias=s.bias)
        self.conv1d = nn.Conv1d(c, c, s.d_conv, groups=c, padding=s.d_conv - 1, bias=s.bias)
        self.out_proj = nn.Linear(c, d, bias=s.bias)

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        T = x.shape[1]
        bcx = ops.project("short_conv_in", x, (self.in_proj,))  # (B, T, 3D)
        b, c, h = torch.split(bcx, self.d_model, dim=-1)  # (B, T, D) each
        u = b * h  # (B, T, D)
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias  # (D, W), (D,) or None
        conv = layer.recurrent["conv"]  # (B, D, W - 1), fp32
        if T == 1:
            y = causal_conv1d_step(u[:, 0], conv, weight, bias, activation=None)[:, None]  # (B, 1, D)
        else:
            y, final = causal_conv1d(u, weight, bias, initial_state=conv.to(u.dtype), activation=None)
            layer.recurrent["conv"] = final.float()
        return ops.project("short_conv_out", c * y, (self.out_proj,))  # (B, T, D)
