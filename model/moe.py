"""The mixture-of-experts feed-forward: the MLP of the layers `HybridConfig.moe` chooses (model/blocks.py).

For each token (x (N, D) after flattening batch and time):
    scores = softmax(router(x)) or sigmoid(router(x))            (N, E), in fp32
    w, e   = top_k(scores)                                       (N, k) weights and expert ids
    w      = w / sum(w) if norm_topk_prob;  w *= routed_scaling
    y      = sum_j w_j * expert_{e_j}(x)  [+ sigmoid(shared_gate(x)) *] shared_expert(x)
Every expert is a SwiGLU, down(silu(gate(x)) * up(x)); the routed experts' weights are stacked as
(E, ...) parameters (`experts.gate_proj` (E, I, D), `experts.up_proj` (E, I, D), `experts.down_proj`
(E, D, I)), the shared expert is a plain `MLP` (model/layers.py).

One forward for any number of tokens, with two ways to apply the routed experts (the same numbers up to
summation order), chosen by shape alone:
- few token-slots (N * k <= E, decode): the chosen experts' weights are gathered by their ids on the
  device and applied as batched matmuls. Nothing is read back to the host, so the decode engine's step
  stays one CUDA graph (model/decode/engine.py), and no more weight bytes are read than all experts hold.
- many (prefill): the token-slots are sorted by expert and each expert that has tokens runs once on its
  tokens (one host read of the per-expert counts).
The router and the shared expert are plain linears and go through `ops.project` / the MLP, as the MLP's do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import MLP
from hybrid_agent.model.ops import Ops
from torch import Tensor, nn


def gathers(cfg: HybridConfig, n_tokens: int) -> bool:
    """Whether a call on `n_tokens` tokens takes the gathered path (no host read; capturable)."""
    return n_tokens * cfg.moe.top_k <= cfg.moe.n_experts


class Experts(nn.Module):
    """The routed experts' SwiGLU weights, stacked along a leading expert axis."""

    def __init__(self, n_experts: int, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.up_proj = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, hidden))


class MoE(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        m = cfg.moe
        assert m.hidden_dim is not None  # set by HybridConfig._derive
        self.cfg = cfg
        self.n_experts, self.top_k = m.n_experts, m.top_k
        self.scoring, self.norm_topk_prob, self.routed_scaling = m.scoring, m.norm_topk_prob, m.routed_scaling
        self.router = nn.Linear(cfg.d_model, m.n_experts, bias=False)
        self.experts = Experts(m.n_experts, cfg.d_model, m.hidden_dim)
        self.shared_expert = MLP(cfg, m.shared_hidden_dim) if m.shared_hidden_dim else None
        gated = self.shared_expert is not None and m.shared_gate
        self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False) if gated else None
        with torch.no_grad():
            for p in self.experts.parameters():
                nn.init.normal_(p, std=cfg.init_std)

    def route(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits (N, E) -> the top-k weights (N, k) in fp32 and expert ids (N, k)."""
        logits = logits.float()
        scores = logits.softmax(-1) if self.scoring == "softmax" else logits.sigmoid()
        weights, ids = scores.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * self.routed_scaling, ids

    def forward(self, x: Tensor, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        weights, ids = self.route(ops.project("router", flat, (self.router,)))
        weights = weights.to(x.dtype)
        if gathers(self.cfg, flat.shape[0]):
            out = self._gathered(flat, weights, ids)
        else:
            out = self._by_expert(flat, weights, ids)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat, ops)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(ops.project("router", flat, (self.shared_expert_gate,))) * shared
            out = out + shared
        return out.view(shape)  # (B, T, D)

    def _gathered(self, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        """Each token-slot's expert weights gathered by id: (N * k) small batched matmuls."""
        N, k = ids.shape
        e, slots = self.experts, ids.reshape(-1)  # (N*k,)
        xs = x.repeat_interleave(k, dim=0).unsqueeze(1)  # (N*k, 1, D)
        gate = torch.bmm(xs, e.gate_proj[slots].transpose(1, 2))  # (N*k, 1, I)
        up = torch.bmm(xs, e.up_proj[slots].transpose(1, 2))
        y = torch.bmm(F.silu(gate) * up, e.down_proj[slots].transpose(1, 2))  # (N*k, 1, D)
        return (y.view(N, k, -1) * weights.unsqueeze(-1)).sum(1)  # (N, D)

    def _by_expert(self, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        """Token-slots sorted by expert; each expert that has tokens runs once on them."""
        k, e = ids.shape[1], self.experts
        flat_ids = ids.reshape(-1)  # (N*k,)
        order = flat_ids.argsort(stable=True)
        counts = torch.bincount(flat_ids, minlength=self.n_experts).tolist()  # the one host read
        flat_w = weights.reshape(-1)
        out = torch.zeros_like(x)
        start = 0
        for expert, n in enumerate(counts):
            if n == 0:
                continue
            slots = order[start : start + n]
            start += n
            tokens = slots // k
            xe = x[tokens]  # (n, D)
            h = F.silu(F.linear(xe, e.gate_proj[expert])) * F.linear(xe, e.up_proj[expert])
            out.index_add_(0, tokens, F.linear(h, e.down_proj[expert]) * flat_w[slots, None])
        return out
