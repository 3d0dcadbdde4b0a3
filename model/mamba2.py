"""The Mamba-2 mixer, with the math and parameter names of transformers' `Mamba2Mixer`.

Glossary (the paper's symbols): x the input of the SSM, B and C its input and output projections
(shared by the heads of a group), dt the per-head step size, A the per-head (negative) decay rate,
D the skip, z the output gate. Sizes: D_model, E = expand * D_model (d_inner), H = E / P heads of size
P, G groups, N = d_state, W = d_conv.

Weights (names and shapes as in transformers, so checkpoints load by name):
- in_proj (E + (E + 2GN) + H, D_model): z, then xBC, then dt, in that order
- conv1d: depthwise nn.Conv1d over xBC, weight (E + 2GN, 1, W), bias (E + 2GN,) if conv_bias
- dt_bias (H,), A_log (H,) with A = -exp(A_log), D (H,)
- norm.weight (E,): gated RMSNorm over groups of E / G channels
- out_proj (D_model, E)

T == 1 runs the one-step kernels (decode; on the CPU their `*_cpu` forms, see kernels/_dispatch.py);
T > 1 the chunked ones (prefill). Both read and write the same layer state: `conv` (B, E + 2GN, W - 1)
and `ssm` (B, H, P, N), fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import causal_conv1d, causal_conv1d_step, ssd_scan, ssm_step
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import GatedRMSNorm
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        m = cfg.mamba2
        assert m.head_dim and m.d_state
        self.d_inner, self.n_heads, self.head_dim = cfg.mamba2_d_inner, cfg.mamba2_heads, m.head_dim
        self.n_groups, self.d_state, self.chunk_size = m.n_groups, m.d_state, m.chunk_size
        self.conv_dim = cfg.mamba2_conv_dim
        self.dt_limit = m.dt_limit
        self.in_proj = nn.Linear(cfg.d_model, self.d_inner + self.conv_dim + self.n_heads, bias=m.bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            m.d_conv,
            groups=self.conv_dim,
            padding=m.d_conv - 1,
            bias=m.conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = (
            GatedRMSNorm(
                self.d_inner,
                cfg.norm_eps,
                group_size=self.d_inner // self.n_groups,
                norm_before_gate=m.norm_before_gate,
            )
            if m.gated_norm
            else None  # gated_norm off: y * silu(z), no weight
        )
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=m.bias)
        self.reset_ssm_parameters(cfg)

    @torch.no_grad()
    def reset_ssm_parameters(self, cfg: HybridConfig) -> None:
        """Mamba-2's init: A = 1..H, D = 1, dt log-uniform in [dt_min, dt_max] through dt_bias."""
        m = cfg.mamba2
        self.A_log.copy_(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        log_dt = torch.rand(self.n_heads) * (math.log(m.dt_max) - math.log(m.dt_min)) + math.log(m.dt_min)
        dt = log_dt.exp().clamp(min=m.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        Bsz, T, _ = x.shape
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        zxbcdt = ops.project("mamba_in", x, (self.in_proj,))  # (B, T, E + E + 2GN + H)
        z, xBC, dt = torch.split_with_sizes(
            zxbcdt, [self.d_inner, self.conv_dim, H], dim=-1
        )  # (B,T,E) (B,T,E+2GN) (B,T,H)
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias  # (E + 2GN, W)
        conv = layer.recurrent["conv"]
        if T == 1:
            xBC = causal_conv1d_step(xBC[:, 0], conv, weight, bias)[:, None]  # (B, 1, E + 2GN)
        else:
            xBC, final = causal_conv1d(xBC, weight, bias, initial_state=conv.to(xBC.dtype))  # (B, T, E + 2GN)
            layer.recurrent["conv"] = final.float()
        xs, Bm, Cm = torch.split_with_sizes(
            xBC, [self.d_inner, G * N, G * N], dim=-1
        )  # (B,T,E) (B,T,GN) (B,T,GN)

        dt = F.softplus(_f32(dt) + _f32(self.dt_bias))  # (B, T, H), > 0
        lo, hi = self.dt_limit
        if lo > 0.0 or hi is not None:
            dt = dt.clamp(min=lo, max=hi)
        A = self._A()  # (H,)
        if T == 1:
            y = ssm_step(
                layer.recurrent["ssm"],
                xs.view(Bsz, H, P),
                dt[:, 0],
                A,
                Bm.view(Bsz, G, N),
                Cm.view(Bsz, G, N),
                D=self.D,
            )  # (B, H, P)
        else:
            y, layer.recurrent["ssm"] = ssd_scan(
                xs.reshape(Bsz, T, H, P),
                dt,
                A,
                Bm.reshape(Bsz, T, G, N),
                Cm.reshape(Bsz, T, G, N),
                D=self.D,
                initial_state=layer.recurrent["ssm"],
                chunk_size=self.chunk_size,
            )  # (B, T, H, P)
        y = y.reshape(Bsz, T, self.d_inner)  # (B, T, E)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z.float())  # (B, T, E)
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        return ops.project("mamba_out", y, (self.out_proj,))  # (B, T, D_model)

    def _A(self) -> Tensor:
        """-exp(A_log), computed once per weight version (decode asks for it every token); computed
        afresh each call under autograd (a cached result would carry an old graph)."""
        if torch.is_grad_enabled() and self.A_log.requires_grad:
            return -torch.exp(_f32(self.A_log))
        key = (self.A_log.data_ptr(), self.A_log._version)
        cached = getattr(self, "_A_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, -torch.exp(_f32(self.A_log)))
            self._A_cache = cached
        return cached[1]


def _f32(t: Tensor) -> Tensor:
    # A dtype check instead of `.float()`: in fp32 the no-op call still costs a dispatch per token.
    return t if t.dtype == torch.float32 else t.float()
