"""Grouped-query attention with RoPE, optional QK-norm, and a windowed cache with sink tokens.

Design choices:
- Positions are absolute (`state.n_tokens` is the position of the first new token), so RoPE and the
  window mask come out the same whether a sequence arrives in one call, in chunks or token by token.
- New keys are appended to the cache first, then every query attends over cache + new keys with a
  per-query mask (causal, window, sinks); eviction happens after the call (ModelState.evict). Keys are
  cached after RoPE. Where the cache lives and which kernels attend is `ops`' (model/ops.py): the
  model's own growing cache, or the decode engine's buffers (model/decode/ops.py).
- Weights (transformers names): q_proj (H*Dh, D), k_proj and v_proj (Hkv*Dh, D), o_proj (D, H*Dh),
  optional q_norm / k_norm weights of size Dh ("head") or H*Dh / Hkv*Dh ("full"); with `output_gate`
  g_proj (H*Dh, D), stacked after v in the one input projection so q|k|v keep their offsets (the
  engine's fused prep reads them there and ignores the columns after); `ops.attend` multiplies its
  output by sigmoid(gate) (the engine's attention kernel in its last step).
"""

from __future__ import annotations

import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import RMSNorm
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.rope import rope_inv_freq, rotate
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        a = cfg.attention
        assert a.n_heads and a.n_kv_heads and a.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.qk_norm = a.qk_norm
        q_dim, kv_dim = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        self.q_proj = nn.Linear(cfg.d_model, q_dim, bias=a.bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=a.bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=a.bias)
        self.o_proj = nn.Linear(q_dim, cfg.d_model, bias=a.bias)
        self.output_gate = a.output_gate
        if a.output_gate:
            self.g_proj = nn.Linear(cfg.d_model, q_dim, bias=a.bias)
        if a.qk_norm != "none":
            full = a.qk_norm == "full"
            self.q_norm = RMSNorm(q_dim if full else a.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(kv_dim if full else a.head_dim, cfg.norm_eps)
        self.inv_freq: Tensor | None
        if a.rope_theta is None:
            self.inv_freq = None
        else:
            # Not persistent: derived from the config, so it never appears in a checkpoint.
            # Partial RoPE (rope_fraction < 1) rotates the first rope_dim channels of each head.
            self.rope_dim = int(a.head_dim * a.rope_fraction) // 2 * 2
            self.rope_theta = a.rope_theta
            self.register_buffer("inv_freq", rope_inv_freq(self.rope_dim, a.rope_theta), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the buffers no checkpoint holds (the loader's `to_empty` leaves them uninitialised)."""
        if self.inv_freq is not None:
            self.inv_freq.copy_(rope_inv_freq(self.rope_dim, self.rope_theta))

    @property
    def in_projs(self) -> tuple[nn.Linear, ...]:
        """The input projections side by side, in the order of the stacked projection: q|k|v(|g)."""
        gate = (self.g_proj,) if self.output_gate else ()
        return (self.q_proj, self.k_proj, self.v_proj, *gate)

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        pos = ops.positions(state, x.shape[1], x.device)  # (T,)
        qkv = ops.project("attn_in", x, self.in_projs)  # (B, T, (H + 2 Hkv) Dh (+ H Dh))
        q = ops.attention_in(self, layer, state, qkv, pos)  # (B, T, H, Dh); k and v are in the cache
        gate = None
        if self.output_gate:  # out * sigmoid(gate), applied by `ops.attend` (the engine's kernel fuses it)
            start, width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, self.n_heads * self.head_dim
            gate = qkv[..., start : start + width]  # (B, T, H * Dh)
        out = ops.attend(self, layer, state, q, pos, gate)  # (B, T, H * Dh)
        return ops.project("attn_out", out, (self.o_proj,))  # (B, T, D)

    def prep(self, qkv: Tensor, pos: Tensor, ops: Ops) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, T, H, Dh), k and v (B, T, Hkv, Dh) from the stacked projection (B, T, (H + 2 Hkv) Dh,
        maybe with padding columns after them) at absolute positions `pos` (T,): QK-norm and RoPE.
        kernels.attn_decode_prep is this for one token, fused with the cache writes."""
        B, T, _ = qkv.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = (
            qkv[..., : H * Dh],
            qkv[..., H * Dh : (H + Hkv) * Dh],
            qkv[..., (H + Hkv) * Dh : (H + 2 * Hkv) * Dh],
        )
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(B, T, H, Dh)  # (B, T, H, Dh)
        k = k.reshape(B, T, Hkv, Dh)  # (B, T, Hkv, Dh)
        v = v.reshape(B, T, Hkv, Dh)  # (B, T, Hkv, Dh)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.inv_freq is not None:
            cos, sin = ops.rope(pos, self.inv_freq, self.rope_theta)
            if T > 1:  # each on its own: no concatenated copy of q and k
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            else:  # one token: q and k in one rotation (fewer torch calls)
                qk = rotate(torch.cat((q, k), dim=2), cos, sin)  # (B, 1, H + Hkv, Dh)
                q, k = qk[:, :, :H], qk[:, :, H:]
        return q, k, v
