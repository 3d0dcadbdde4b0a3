"""The mixture-of-experts feed-forward: the MLP of the layers `HybridConfig.moe` chooses (model/blocks.py).

For each token (x (N, D) after flattening batch and time):
    scores = softmax(router(x)) or sigmoid(router(x))            (N, E), in fp32
    choice = scores [+ score_bias], outside the best groups -inf (N, E), only to choose
    e      = top_k(choice);  w = scores[e]                       (N, k) expert ids and weights
    w      = w / sum(w) if norm_topk_prob;  w *= routed_scaling
    y      = sum_j w_j * expert_{e_j}(x)  [+ sigmoid(shared_gate(x)) *] shared_expert(x)
With a latent space (`moe.latent_dim`, Nemotron 3 Super) the routed experts read latent_in(x) (D -> L)
and their weighted sum is projected back, latent_out(sum_j w_j * expert_{e_j}(latent_in(x))) (L -> D);
the router and the shared expert read x, as without one (transformers' `NemotronHMoE`).
Groups (DeepSeek-V3's selection, `n_groups` > 1): the E experts are split into n_groups equal groups, a
group scores the sum of its two best `choice` values, and only the `topk_groups` best groups' experts
stay choosable. Every expert is an MLP with `mlp.activation`: a SwiGLU, down(silu(gate(x)) * up(x)), or
relu2, down(relu(up(x))^2) without a gate (Nemotron-H). The routed experts' weights are stacked as
(E, ...) parameters (`experts.gate_proj` (E, I, D), `experts.up_proj` (E, I, D), `experts.down_proj`
(E, D, I)), the shared expert is a plain `MLP` (model/layers.py).

One forward for any number of tokens, with two ways to apply the routed experts (the same numbers up to
summation order), chosen by shape alone, both in hybrid_agent.kernels (Triton on CUDA, their torch
references elsewhere; `HYBRID_AGENT_KERNELS` switches as for every kernel):
- few token-slots (N * k <= E, decode): `kernels.moe_gemv` reads only the chosen experts' rows (the
  reference gathers their weights by id and runs batched matmuls). Nothing is read back to the host, so
  the decode engine's step stays one CUDA graph (model/decode/engine.py).
- many (prefill): `kernels.moe_grouped_gemm`, the token-slots sorted by expert and one grouped GEMM over
  all experts on CUDA (no host read either); the reference runs each expert that has tokens once on its
  tokens (one host read of the per-expert counts).
The router and the shared expert are plain linears and go through `ops.project` / the MLP, as the MLP's
do; with `moe.router_fp32` (Nemotron-H, Kimi Linear) the router's weight stays fp32 and multiplies x in
fp32, as transformers does for those families, so a bf16 model picks the experts theirs picks.
The decode engine runs the same layer in a few launches (`Ops.moe_step`, model/decode/moe_step.py):
this forward stays the definition it is tested against (and what the engine runs for a layer with a
latent space: the latent projections are `ops.project` calls too).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hybrid_agent.kernels.moe import moe_gemv, moe_grouped_gemm
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import MLP
from hybrid_agent.model.ops import Ops
from torch import Tensor, nn


def gathers(cfg: HybridConfig, n_tokens: int) -> bool:
    """Whether a call on `n_tokens` tokens takes the gathered path (no host read; capturable)."""
    return n_tokens * cfg.moe.top_k <= cfg.moe.n_experts


class Experts(nn.Module):
    """The routed experts' weights, stacked along a leading expert axis (no gate_proj when not gated)."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, gated: bool = True) -> None:
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n_experts, hidden, d_model)) if gated else None
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
        self.router_fp32 = m.router_fp32
        width = m.latent_dim or cfg.d_model  # what the routed experts read and write
        self.experts = Experts(m.n_experts, width, m.hidden_dim, cfg.mlp.activation == "swiglu")
        latent = m.latent_dim > 0
        self.latent_in = nn.Linear(cfg.d_model, width, bias=cfg.mlp.bias) if latent else None
        self.latent_out = nn.Linear(width, cfg.d_model, bias=cfg.mlp.bias) if latent else None
        self.n_groups, self.topk_groups = m.n_groups, m.topk_groups
        # Added to the scores for choosing experts only (DeepSeek-V3's e_score_correction_bias).
        self.score_bias = nn.Parameter(torch.zeros(m.n_experts)) if m.score_bias else None
        self.shared_expert = MLP(cfg, m.shared_hidden_dim) if m.shared_hidden_dim else None
        gated = self.shared_expert is not None and m.shared_gate
        self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False) if gated else None
        with torch.no_grad():
            for p in self.experts.parameters():
                nn.init.normal_(p, std=cfg.init_std)

    def _apply(self, fn: Any, recurse: bool = True) -> MoE:
        """`score_bias` (and the router's weight with `router_fp32`) stay fp32 whatever dtype the model
        is cast to: the bias decides between scores that differ in their third digit, which bf16 cannot
        hold (the loader casts the model before filling it, so checkpoint values arrive unrounded)."""
        out = super()._apply(fn, recurse)
        kept = [self.score_bias, self.router.weight if self.router_fp32 else None]
        for p in kept:
            if p is not None and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        return out

    def route(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits (N, E) -> the top-k weights (N, k) in fp32 and expert ids (N, k)."""
        logits = logits.float()
        scores = logits.softmax(-1) if self.scoring == "softmax" else logits.sigmoid()
        if self.score_bias is None and self.n_groups == 1:
            weights, ids = scores.topk(self.top_k, dim=-1)
        else:
            choice = scores if self.score_bias is None else scores + self.score_bias.float()
            if self.n_groups > 1:
                choice = self._in_best_groups(choice)
            ids = choice.topk(self.top_k, dim=-1).indices
            weights = scores.gather(-1, ids)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * self.routed_scaling, ids

    def _in_best_groups(self, choice: Tensor) -> Tensor:
        """`choice` (N, E) with the experts outside the `topk_groups` best groups set to -inf; a group
        scores the sum of its two best values. All on the device (no host read)."""
        N, E = choice.shape
        groups = choice.view(N, self.n_groups, E // self.n_groups)
        best = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)  # (N, n_groups)
        keep = torch.zeros_like(best, dtype=torch.bool)
        keep.scatter_(1, best.topk(self.topk_groups, dim=-1).indices, True)
        return groups.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(N, E)

    def logits(self, flat: Tensor, ops: Ops) -> Tensor:
        """Router logits (N, E): in fp32 with `router_fp32`, else in the model's dtype."""
        if self.router_fp32:
            return F.linear(flat.float(), self.router.weight.float())
        return ops.project("router", flat, (self.router,))

    def forward(self, x: Tensor, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        fused = ops.moe_step(self, flat)  # the decode engine's few-launch step (model/decode/moe_step.py)
        if fused is not None:
            return fused.view(shape)
        weights, ids = self.route(self.logits(flat, ops))
        e = self.experts
        xe = flat if self.latent_in is None else ops.project("up", flat, (self.latent_in,))  # (N, L)
        args = (xe, ids, weights.to(x.dtype), e.gate_proj, e.up_proj, e.down_proj)
        out = moe_gemv(*args) if gathers(self.cfg, flat.shape[0]) else moe_grouped_gemm(*args)
        if self.latent_out is not None:
            out = ops.project("down", out, (self.latent_out,))  # (N, D)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat, ops)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(ops.project("router", flat, (self.shared_expert_gate,))) * shared
            out = out + shared
        return out.view(shape)  # (B, T, D)
