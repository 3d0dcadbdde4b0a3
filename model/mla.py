"""Multi-head latent attention (MLA, DeepSeek-V2/V3) with a cache of latents, not of keys and values.

Glossary (DeepSeek-V2 paper -> here): H heads; c_kv (width C = kv_lora_rank) the normalised latent of
a token; k_rope (width R = qk_rope_head_dim) its RoPE key, shared by all heads; per head a query
q = [q_nope (dn = qk_nope_head_dim) | q_rope (R)], a key k = [W_uk c_kv (dn) | k_rope (R)] and a
value v = W_uv c_kv (dv = v_head_dim), where kv_b_proj = [W_uk; W_uv] per head.

Design choices:
- The cache holds `latent` (B, L, C) and `k_rope` (B, L, R) only: C + R numbers per token and layer,
  against 2 * Hkv * Dh for grouped-query attention. Keys are cached after RoPE, positions are
  absolute, so chunked prefill sees exactly what a one-shot prefill sees; appending and the window
  are ModelState's (`append_cache`, `evict`), shared with model/attention.py.
- Two equal ways to attend. Decompressed: expand every cached latent to per-head k_nope and v with
  kv_b_proj, then ordinary attention. Absorbed: fold W_uk into the query (q_nope W_uk, width C) and
  W_uv into the output, so the scores and the weighted sum run over the latents directly, as
  multi-query attention with head size C + R and value size C. Absorbed costs more per (query, key)
  pair but never expands the cache; `absorbs(T, L)` picks the cheaper one by counting
  multiply-adds: decode (T = 1) runs absorbed once two tokens are cached, a long prefill decompresses.
  `MLA.absorb` forces one way (tests check both give the same numbers).
- Weight names follow transformers' DeepseekV3Attention (`q_proj` or `q_a_proj`/`q_a_layernorm`/
  `q_b_proj`, `kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj`, `o_proj`), so its weights load by
  name. `rope_interleave` (DeepSeek's checkpoints) rotates adjacent pairs; we de-interleave the RoPE
  channels (evens, then odds) and use the rotate-half rotation, which is the same map transformers
  applies, so the cached k_rope matches its layout too.
- `rope_theta=None` (Kimi Linear): no RoPE at all; q_rope and k_rope stay as projected (k_rope is
  still one key part shared by all heads, cached as is).
- Softmax scale 1 / sqrt(dn + R). YaRN's mscale (long-context DeepSeek checkpoints) is not supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import RMSNorm
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.rope import rope_inv_freq, rotate
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn


class MLA(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        m = cfg.mla
        assert m.n_heads and m.kv_lora_rank and m.qk_nope_head_dim and m.qk_rope_head_dim and m.v_head_dim
        self.n_heads, self.kv_lora_rank = m.n_heads, m.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        self.rope_interleave = m.rope_interleave
        self.scale = 1.0 / math.sqrt(self.nope_dim + self.rope_dim)
        self.absorb: bool | None = None  # None: pick the cheaper form per call; True/False force one
        d, h, qk = cfg.d_model, m.n_heads, m.qk_nope_head_dim + m.qk_rope_head_dim
        self.q_proj: nn.Linear | None = None
        if m.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * qk, bias=False)  # transformers: no bias here, even with `bias`
        else:
            self.q_a_proj = nn.Linear(d, m.q_lora_rank, bias=m.bias)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, m.norm_eps)
            self.q_b_proj = nn.Linear(m.q_lora_rank, h * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, m.kv_lora_rank + m.qk_rope_head_dim, bias=m.bias)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, m.norm_eps)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * m.v_head_dim, d, bias=m.bias)
        # Not persistent: derived from the config, so it never appears in a checkpoint.
        self.rope_theta = m.rope_theta
        self.inv_freq: Tensor | None
        if m.rope_theta is None:
            self.inv_freq = None
        else:
            self.register_buffer(
                "inv_freq", rope_inv_freq(m.qk_rope_head_dim, m.rope_theta), persistent=False
            )

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the buffers no checkpoint holds (the loader's `to_empty` leaves them uninitialised)."""
        if self.inv_freq is not None and self.rope_theta is not None:
            self.inv_freq.copy_(rope_inv_freq(self.rope_dim, self.rope_theta))

    def _rope(self, x: Tensor, pos: Tensor, ops: Ops) -> Tensor:
        """RoPE on x (B, T, H, R) at absolute positions `pos` (T,), in the checkpoint's pair layout."""
        if self.inv_freq is None or self.rope_theta is None:  # NoPE
            return x
        if self.rope_interleave:
            x = torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)  # (B, T, H, R): evens, then odds
        cos, sin = ops.rope(pos, self.inv_freq, self.rope_theta)
        return rotate(x, cos, sin)

    def absorbs(self, T: int, L: int) -> bool:
        """Whether absorbed attention takes fewer multiply-adds than decompressing the L cached latents."""
        if self.absorb is not None:
            return self.absorb
        C, dn, R, dv = self.kv_lora_rank, self.nope_dim, self.rope_dim, self.v_dim
        absorbed = T * (C * (dn + dv) + L * (2 * C + R))  # per head: fold W_uk / W_uv, scores + sum
        decompressed = L * C * (dn + dv) + T * L * (dn + R + dv)  # per head: expand L latents, attend
        return absorbed <= decompressed

    def forward(self, x: Tensor, layer: LayerState, state: ModelState, ops: Ops | None = None) -> Tensor:
        ops = ops or Ops()
        B, T, _ = x.shape
        H, C, R, dn = self.n_heads, self.kv_lora_rank, self.rope_dim, self.nope_dim
        if self.q_proj is not None:  # one stacked projection for the query and the latent
            both = ops.project("mla_in", x, (self.q_proj, self.kv_a_proj_with_mqa))
            q, kv = both[..., : H * (dn + R)], both[..., H * (dn + R) : H * (dn + R) + C + R]
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
            kv = self.kv_a_proj_with_mqa(x)
        q = q.reshape(B, T, H, dn + R)  # (B, T, H, dn + R)
        q_nope, q_rope = q.split((dn, R), dim=-1)  # (B, T, H, dn), (B, T, H, R)
        latent, k_rope = kv.split((C, R), dim=-1)  # (B, T, C), (B, T, R)
        latent = self.kv_a_layernorm(latent)
        pos = ops.positions(state, T, x.device)  # (T,)
        q_rope = self._rope(q_rope, pos, ops)
        k_rope = self._rope(k_rope[:, :, None], pos, ops)[:, :, 0]  # (B, T, R)
        ops.write(layer, state, {"latent": latent, "k_rope": k_rope}, pos)  # cast to the cache dtype
        out = ops.attend_latent(self, layer, state, q_nope, q_rope, pos)  # (B, T, H, dv)
        return ops.project("mla_out", out.reshape(B, T, H * self.v_dim), (self.o_proj,))  # (B, T, D)

    def absorb_query(self, q_nope: Tensor) -> Tensor:
        """W_uk folded into the query: (B, T, H, dn) -> (B, H, T, C), times the softmax scale."""
        w_uk = self.kv_b_proj.weight.view(self.n_heads, self.nope_dim + self.v_dim, -1)[:, : self.nope_dim]
        return torch.einsum("bthd,hdc->bhtc", q_nope * self.scale, w_uk)  # (B, H, T, C)

    def absorb_output(self, ctx: Tensor) -> Tensor:
        """W_uv applied to the attended latents: (B, H, T, C) -> (B, T, H, dv)."""
        w_uv = self.kv_b_proj.weight.view(self.n_heads, self.nope_dim + self.v_dim, -1)[:, self.nope_dim :]
        return torch.einsum("bhtc,hvc->bthv", ctx, w_uv)  # (B, T, H, dv)

    def attend_decompressed(
        self, q_nope: Tensor, q_rope: Tensor, latents: Tensor, keys_rope: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Expand the latents to per-head keys and values, then attend. Returns (B, T, H, dv)."""
        B, L, _ = latents.shape
        H = self.n_heads
        kv = self.kv_b_proj(latents).view(B, L, H, self.nope_dim + self.v_dim)  # (B, L, H, dn + dv)
        k_nope, v = kv.split((self.nope_dim, self.v_dim), dim=-1)  # (B, L, H, dn), (B, L, H, dv)
        k_shared = keys_rope[:, :, None].expand(B, L, H, self.rope_dim)  # (B, L, H, R), no copy
        k = torch.cat((k_nope, k_shared), dim=-1)  # (B, L, H, dn + R)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, T, H, dn + R)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=self.scale
        )  # (B, H, T, dv)
        return out.transpose(1, 2)  # (B, T, H, dv)

    def attend_absorbed(
        self, q_nope: Tensor, q_rope: Tensor, latents: Tensor, keys_rope: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Attend over the latents directly: all heads share one key (latent | k_rope). Returns (B, T, H, dv).

        score(q, j) = q_nope . (W_uk c_j) + q_rope . k_rope_j = (q_nope W_uk) . c_j + q_rope . k_rope_j, and
        sum_j p_j W_uv c_j = W_uv (sum_j p_j c_j): heads become extra query rows of one (B, H*T, L) product.
        """
        B, T, H, _ = q_nope.shape
        q_lat = self.absorb_query(q_nope).reshape(B, H * T, -1)  # (B, H*T, C)
        q_rot = q_rope.transpose(1, 2).reshape(B, H * T, self.rope_dim) * self.scale  # (B, H*T, R)
        # Cache-major products ((L, C) @ (C, H*T)): several times faster on CPU than (H*T, C) @ (C, L).
        scores = keys_rope @ q_rot.transpose(1, 2)  # (B, L, H*T)
        scores = torch.baddbmm(scores, latents, q_lat.transpose(1, 2))  # (B, L, H*T)
        scores = scores.transpose(1, 2).contiguous().float()  # (B, H*T, L)
        if mask is not None:
            scores = scores.masked_fill(~mask.repeat(H, 1), float("-inf"))  # rows are (head, query)
        probs = torch.softmax(scores, dim=-1).to(latents.dtype)  # (B, H*T, L)
        ctx = (probs @ latents).view(B, H, T, self.kv_lora_rank)  # (B, H, T, C)
        return self.absorb_output(ctx)  # (B, T, H, dv)
