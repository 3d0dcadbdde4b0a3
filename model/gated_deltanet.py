"""The Gated DeltaNet mixer, with the math and parameter names of transformers' OLMo Hybrid
(`OlmoHybridGatedDeltaNet`; Qwen3-Next's is the same math with fused projections).

Glossary: q, k (Hk heads of size Dk), v (Hv heads of size Dv, Hv a multiple of Hk: each query/key head
serves Hv / Hk consecutive value heads); beta the write strength, sigmoid(b) (x2 with
`allow_neg_eigval`, so the state's transition can have negative eigenvalues); g the log-decay,
-exp(A_log) * softplus(a + dt_bias); S the key-first state (B, Hv, Dk, Dv).

Weights (transformers names):
- q_proj, k_proj (Hk*Dk, D); v_proj (Hv*Dv, D); a_proj, b_proj (Hv, D); g_proj (Hv*Dv, D): the output gate
- conv1d: depthwise nn.Conv1d over q, k, v side by side, weight (2*Hk*Dk + Hv*Dv, 1, W), SiLU after
- A_log (Hv,), dt_bias (Hv,)
- o_norm.weight (Dv,): RMSNorm per head, then times silu(gate) (norm before gate)
- o_proj (D, Hv*Dv)

q and k are L2-normalised here (the kernels expect it). State: `conv` (B, 2*Hk*Dk + Hv*Dv, W - 1) and
`recurrent` (B, Hv, Dk, Dv), fp32.
"""

from __future__ import annotations

import math

import torch
from hybrid_agent.kernels import causal_conv1d, chunk_gated_delta_rule, gated_delta_rule_step, gdn_gates
from hybrid_agent.kernels.gdn_decode_prep import gdn_decode_prep
from hybrid_agent.kernels.l2_norm import l2_norm
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import GatedRMSNorm
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (fla's and transformers' form, eps inside the root), fp32
    arithmetic, x's dtype out: `kernels.l2_norm` (one pass on CUDA; on the CPU torch's arithmetic, the
    last product reading x itself and rounding once into x's dtype)."""
    return l2_norm(x, eps)


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        g = cfg.gated_deltanet
        assert g.n_heads and g.n_v_heads and g.head_k_dim and g.head_v_dim
        self.n_heads, self.n_v_heads, self.head_k_dim, self.head_v_dim = (
            g.n_heads,
            g.n_v_heads,
            g.head_k_dim,
            g.head_v_dim,
        )
        self.key_dim, self.value_dim, self.conv_dim = cfg.gdn_key_dim, cfg.gdn_value_dim, cfg.gdn_conv_dim
        self.allow_neg_eigval, self.chunk_size = g.allow_neg_eigval, g.chunk_size
        d = cfg.d_model
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d, self.n_v_heads, bias=False)
        self.b_proj = nn.Linear(d, self.n_v_heads, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            g.d_conv,
            groups=self.conv_dim,
            padding=g.d_conv - 1,
            bias=g.conv_bias,
        )
        self.A_log = nn.Parameter(torch.empty(self.n_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.n_v_heads))
        self.o_norm = GatedRMSNorm(self.head_v_dim, g.norm_eps, norm_before_gate=True)
        self.reset_gate_parameters(cfg)

    @torch.no_grad()
    def reset_gate_parameters(self, cfg: HybridConfig) -> None:
        """A uniform in a_init_range; dt log-uniform in [dt_min, dt_max] through dt_bias (as fla)."""
        g = cfg.gated_deltanet
        self.A_log.copy_(torch.empty(self.n_v_heads).uniform_(*g.a_init_range).log())
        log_dt = torch.rand(self.n_v_heads) * (math.log(g.dt_max) - math.log(g.dt_min)) + math.log(g.dt_min)
        dt = log_dt.exp().clamp(min=g.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    @property
    def in_projs(self) -> tuple[nn.Linear, ...]:
        """The input projections side by side, in the order of the stacked one-token projection."""
        return (self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj, self.g_proj)

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        B, T, _ = x.shape
        Hv, Dv = self.n_v_heads, self.head_v_dim
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias  # (C, W)
        conv = layer.recurrent["conv"]
        if T == 1:  # one token: one stacked projection, kernels.gdn_decode_prep, the delta rule's step
            proj = ops.project("gdn_in", x.view(B, -1), self.in_projs)  # (B, q|k|v|a|b|g)
            a_off = 2 * self.key_dim + self.value_dim
            q, k, v, g, beta = gdn_decode_prep(
                proj, conv, weight, bias, self.A_log, self.dt_bias, Hk=self.n_heads, Dk=self.head_k_dim,
                Hv=Hv, Dv=Dv, a_off=a_off, b_off=a_off + Hv, allow_neg_eigval=self.allow_neg_eigval,
            )  # fmt: skip  # (B, Hv, Dk) x2, (B, Hv, Dv), (B, Hv) x2
            o = gated_delta_rule_step(layer.recurrent["recurrent"], q, k, v, g, beta)  # (B, Hv, Dv)
            gate = proj[:, a_off + 2 * Hv : a_off + 2 * Hv + self.value_dim]  # (B, Hv*Dv)
        else:  # a chunk: q|k|v|a|b|g side by side (one matmul where the weights are stacked: model/ops.py),
            # views of its columns, one pass each for the L2 norms and the gates
            proj = ops.project("gdn_in", x, self.in_projs)  # (B, T, q|k|v|a|b|g)
            C, a_off = self.conv_dim, 2 * self.key_dim + self.value_dim
            qkv, final = causal_conv1d(
                proj[..., :C], weight, bias, initial_state=conv.to(x.dtype)
            )  # (B, T, C), packed
            layer.recurrent["conv"] = final.float()
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
            q = l2_normalize(q.reshape(B, T, self.n_heads, self.head_k_dim))  # (B, T, Hk, Dk)
            k = l2_normalize(k.reshape(B, T, self.n_heads, self.head_k_dim))  # (B, T, Hk, Dk)
            v = v.reshape(B, T, Hv, Dv)  # (B, T, Hv, Dv)
            if Hv != self.n_heads:
                r = Hv // self.n_heads
                q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)  # (B, T, Hv, Dk)
            g, beta = gdn_gates(
                proj[..., a_off : a_off + Hv], proj[..., a_off + Hv : a_off + 2 * Hv], self.A_log,
                self.dt_bias, allow_neg_eigval=self.allow_neg_eigval,
            )  # fmt: skip  # (B, T, Hv) fp32 each
            o, layer.recurrent["recurrent"] = chunk_gated_delta_rule(
                q, k, v, g, beta, initial_state=layer.recurrent["recurrent"], chunk_size=self.chunk_size
            )  # (B, T, Hv, Dv)
            gate = proj[..., a_off + 2 * Hv : a_off + 2 * Hv + self.value_dim]  # (B, T, Hv*Dv), a view
        o = self.o_norm(o, gate.reshape(o.shape))  # (B, T, Hv, Dv) or (B, Hv, Dv)
        return ops.project(
            "gdn_out", o.reshape(B, T, self.value_dim).to(x.dtype), (self.o_proj,)
        )  # (B, T, D)
