"""Grouped-query attention with RoPE, optional QK-norm, and a windowed cache with sink tokens.

Design choices:
- Positions are absolute (`state.n_tokens` is the position of the first new token), so RoPE and the
  window mask come out the same whether a sequence arrives in one call, in chunks or token by token.
- New keys are appended to the cache first, then every query attends over cache + new keys with a
  per-query mask (causal, window, sinks); eviction happens after the call (ModelState.evict). Keys are
  cached after RoPE.
- Weights (transformers names): q_proj (H*Dh, D), k_proj and v_proj (Hkv*Dh, D), o_proj (D, H*Dh),
  optional q_norm / k_norm weights of size Dh ("head") or H*Dh / Hkv*Dh ("full").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.layers import RMSNorm, rope_cos_sin, rope_inv_freq, rotate
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None, sinks: int) -> Tensor:
    """(Tq, Tk) bool: key j is seen by query q iff j <= q and (j > q - window or j < sinks)."""
    q, k = q_pos[:, None], k_pos[None, :]  # (Tq, 1), (1, Tk)
    mask = k <= q
    if window is not None:
        mask &= (k > q - window) | (k < sinks)
    return mask


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

    def project(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, T, H, Dh), k and v (B, T, Hkv, Dh) of `x` (B, T, D) at absolute positions `pos` (T,):
        projections, QK-norm and RoPE. Shared with the decode engine's reference step (model/decode/),
        which passes a device-side position so the step can be captured as a CUDA graph."""
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H*Dh), (B, T, Hkv*Dh) x2
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)  # (B, T, H, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.inv_freq is not None:
            cos, sin = rope_cos_sin(pos, self.inv_freq)  # once for q and k
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return q, k, v

    def forward(self, x: Tensor, layer: LayerState, state: ModelState) -> Tensor:
        B, T, _ = x.shape
        pos = torch.arange(state.n_tokens, state.n_tokens + T, device=x.device)  # (T,)
        q, k, v = self.project(x, pos)

        new = {"k": k.transpose(1, 2), "v": v.transpose(1, 2)}  # (B, Hkv, T, Dh) each
        state.append_cache(layer, new, pos)
        keys, values, key_pos = layer.cache["k"], layer.cache["v"], layer.pos  # (B, Hkv, L, Dh), (L,)
        assert key_pos is not None

        # Grouped-query attention without copying K/V per query head: the G = H / Hkv query heads that
        # share a KV head become G * T query rows of that head (head h reads KV head h // G).
        G = self.n_heads // self.n_kv_heads
        q = q.transpose(1, 2).reshape(B, self.n_kv_heads, G * T, self.head_dim)  # (B, Hkv, G*T, Dh)
        mask = None
        if T > 1 or state.window is not None:
            mask = visible(pos, key_pos, state.window, state.sinks).repeat(G, 1)  # (G*T, L)
        out = sdpa(
            q,
            keys if keys.dtype == q.dtype else keys.to(q.dtype),  # skip the no-op casts' dispatch
            values if values.dtype == q.dtype else values.to(q.dtype),
            mask,
            1.0 / math.sqrt(self.head_dim),
        )  # (B, Hkv, G*T, Dh)
        # reshape, not view: CUDA's flash SDPA may hand back this output non-contiguous.
        out = out.reshape(B, self.n_heads, T, self.head_dim)  # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)

    def step_cpu(
        self, x: Tensor, layer: LayerState, state: ModelState, memo: dict[object, object] | None = None
    ) -> Tensor:
        """`forward` for one fp32 token on the CPU (model/layers.py `cpu_decode_applies`) without a
        window or QK-norm, bit for bit: the same projections, RoPE values and SDPA call, with q and
        k rotated together and without the position range, the per-head transposes and the RoPE
        helper's extra concatenations (~15 fewer torch calls a layer). DecodeEngine's CPU step
        (`project` + `sdpa`) is held to the same numbers by tests/engine/test_engine_cpu.py."""
        if state.window is not None or self.qk_norm != "none" or self.inv_freq is None:
            return self.forward(x, layer, state)
        B, H, Hkv, Dh, R = x.shape[0], self.n_heads, self.n_kv_heads, self.head_dim, self.rope_dim
        n = state.n_tokens
        x2 = x.view(B, -1)
        q = F.linear(x2, self.q_proj.weight, self.q_proj.bias).view(B, H, Dh)
        k = F.linear(x2, self.k_proj.weight, self.k_proj.bias).view(B, Hkv, Dh)
        v = F.linear(x2, self.v_proj.weight, self.v_proj.bias).view(B, Hkv, 1, Dh)
        # the layers of one step share position n and, with the same (R, theta), cos and sin
        key = ("rope", n, R, self.rope_theta)
        rope = memo.get(key) if memo is not None else None
        if rope is None:
            # `rope_cos_sin` at position n: n * inv_freq in fp32 (exact below 2**24), duplicated
            freqs = self.inv_freq * float(n)  # (R/2,)
            emb = torch.cat((freqs, freqs))  # (R,)
            rope = (emb.cos(), emb.sin())
            if memo is not None:
                memo[key] = rope
        cos, sin = rope  # (R,) each: the values `forward` uses
        # rotate(): x * cos + cat(-x2, x1) * sin, with q and k in one tensor
        qk = torch.cat((q, k), dim=1)  # (B, H + Hkv, Dh)
        rotated = torch.cat((qk[..., R // 2 : R].neg(), qk[..., : R // 2]), dim=-1)  # (B, H + Hkv, R)
        rotated.mul_(sin)
        qk_r = torch.mul(qk[..., :R], cos).add_(rotated)  # (B, H + Hkv, R)
        if Dh != R:  # partial RoPE: the rest of each head passes through
            qk_r = torch.cat((qk_r, qk[..., R:]), dim=-1)  # (B, H + Hkv, Dh)
        state.append_cache(layer, {"k": qk_r[:, H:, None], "v": v}, torch.tensor([n]))  # (B, Hkv, 1, Dh) each
        G = H // Hkv
        q = qk_r[:, :H].reshape(B, Hkv, G, Dh)  # head h reads KV head h // G
        out = sdpa(q, layer.cache["k"], layer.cache["v"], None, 1.0 / math.sqrt(Dh))  # (B, Hkv, G, Dh)
        return F.linear(out.view(B, 1, H * Dh), self.o_proj.weight, self.o_proj.bias)  # (B, 1, D)


# Unmasked calls on CUDA (decode: one query row per head, no window): flash or memory-efficient only.
# With the default backend list, torch 2.11 spent ~59 ms of host time in a call whose key length
# differs from the last one's (every decode step; bench/results/gpu_e2e.json, sdpa_overhead), against
# ~0.1 ms with these two. Masked calls (prefill, windows) keep the default choice.
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
RESTRICT_DECODE_BACKENDS = True  # bench/gpu_e2e.py turns it off to time the default choice


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """`F.scaled_dot_product_attention`, restricted to flash / memory-efficient for unmasked CUDA calls."""
    if (
        mask is None
        and q.is_cuda
        and RESTRICT_DECODE_BACKENDS
        and q.shape[-1] <= 256
        and q.dtype != torch.float64
    ):
        with sdpa_kernel(_DECODE_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
