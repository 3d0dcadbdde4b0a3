"""Kimi delta attention (KDA, Kimi Linear's linear-attention layers): a gated delta rule whose decay is
per key channel, with short convolutions on q, k and v and a sigmoid-gated output norm.

Glossary: H heads, each with q, k and v of size Dk (one `head_dim`); S the key-first state (B, H, Dk, Dk).

    q, k, v = silu(causal_conv(q_proj(x) | k_proj(x) | v_proj(x)))   depthwise, width `d_conv`, no bias
    q, k    = L2-normalised per head
    g       = -exp(A_log[h]) * softplus(f_b_proj(f_a_proj(x)) + dt_bias)   (B, T, H, Dk), log-decay <= 0
    beta    = sigmoid(b_proj(x))                                           (B, T, H)
    o       = KDA(q, k, v, g, beta; S)              kernels.chunk_kda, one token kernels.kda_step
    out     = o_proj(rms_norm(o) * o_norm.weight * sigmoid(g_b_proj(g_a_proj(x))))   norm per head

f_a / f_b and g_a / g_b are low-rank pairs (rank Dk). Weights: q_proj, k_proj, v_proj (H*Dk, D);
conv1d (3*H*Dk, 1, W) over q|k|v side by side; f_a_proj (Dk, D), f_b_proj (H*Dk, Dk); A_log (H,);
dt_bias (H*Dk,); b_proj (H, D); g_a_proj (Dk, D), g_b_proj (H*Dk, Dk); o_norm.weight (Dk,);
o_proj (D, H*Dk). State: `conv` (B, 3*H*Dk, W - 1) and `recurrent` (B, H, Dk, Dk), fp32. The same
forward serves any T: T == 1 takes the one-step kernels (conv step and kda_step), which read and write
the same state as the chunked path, so prefill in pieces equals token by token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hybrid_agent.kernels import causal_conv1d, causal_conv1d_step, chunk_kda, kda_step
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.gated_deltanet import l2_normalize
from hybrid_agent.model.layers import RMSNorm
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class KimiDeltaAttention(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        c = cfg.kda
        assert c.n_heads and c.head_dim  # set by HybridConfig._derive
        self.n_heads, self.head_dim, self.chunk_size = c.n_heads, c.head_dim, c.chunk_size
        d, dim, r = cfg.d_model, c.n_heads * c.head_dim, c.head_dim
        self.dim = dim
        self.q_proj = nn.Linear(d, dim, bias=False)
        self.k_proj = nn.Linear(d, dim, bias=False)
        self.v_proj = nn.Linear(d, dim, bias=False)
        self.conv1d = nn.Conv1d(3 * dim, 3 * dim, c.d_conv, groups=3 * dim, padding=c.d_conv - 1, bias=False)
        self.f_a_proj = nn.Linear(d, r, bias=False)
        self.f_b_proj = nn.Linear(r, dim, bias=False)
        self.b_proj = nn.Linear(d, c.n_heads, bias=False)
        self.g_a_proj = nn.Linear(d, r, bias=False)
        self.g_b_proj = nn.Linear(r, dim, bias=False)
        self.A_log = nn.Parameter(torch.empty(c.n_heads))
        self.dt_bias = nn.Parameter(torch.empty(dim))
        self.o_norm = RMSNorm(c.head_dim, c.norm_eps)
        self.o_proj = nn.Linear(dim, d, bias=False)
        self.reset_gate_parameters(cfg)

    @torch.no_grad()
    def reset_gate_parameters(self, cfg: HybridConfig) -> None:
        """A uniform in a_init_range; dt log-uniform in [dt_min, dt_max] through dt_bias (as fla)."""
        c = cfg.kda
        self.A_log.copy_(torch.empty(self.n_heads).uniform_(*c.a_init_range).log())
        log_dt = torch.rand(self.dim) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        dt = log_dt.exp().clamp(min=c.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        B, T, _ = x.shape
        H, Dk = self.n_heads, self.head_dim
        qkv = ops.project("kda_in", x, (self.q_proj, self.k_proj, self.v_proj))  # (B, T, 3*H*Dk)
        weight, conv = self.conv1d.weight.squeeze(1), layer.recurrent["conv"]  # (C, W), (B, C, W - 1)
        if T == 1:
            qkv = causal_conv1d_step(qkv[:, 0], conv, weight, None, activation="silu")[:, None]  # (B, 1, C)
        else:
            qkv, final = causal_conv1d(qkv, weight, None, initial_state=conv.to(qkv.dtype), activation="silu")
            layer.recurrent["conv"] = final.float()
        q, k, v = (t.reshape(B, T, H, Dk) for t in qkv.split(self.dim, dim=-1))  # (B, T, H, Dk) each
        q, k = l2_normalize(q), l2_normalize(k)
        decay = F.softplus(self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float())  # (B, T, H*Dk)
        g = -self.A_log.float().exp()[:, None] * decay.view(B, T, H, Dk)  # (B, T, H, Dk)
        beta = self.b_proj(x).float().sigmoid()  # (B, T, H)
        rec = layer.recurrent["recurrent"]  # (B, H, Dk, Dk), fp32
        if T == 1:
            o = kda_step(rec, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])[:, None]  # (B, 1, H, Dk)
        else:
            o, layer.recurrent["recurrent"] = chunk_kda(
                q, k, v, g, beta, initial_state=rec, chunk_size=self.chunk_size
            )  # (B, T, H, Dk)
        gate = self.g_b_proj(self.g_a_proj(x)).float().view(B, T, H, Dk).sigmoid()
        o = self.o_norm(o.float()) * gate  # (B, T, H, Dk), fp32
        return ops.project("kda_out", o.reshape(B, T, self.dim).to(x.dtype), (self.o_proj,))  # (B, T, D)
