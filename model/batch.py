"""Decoding several conversations in one batch on the model's own path: each row has its own position,
its own recurrent state and its own cache length (continuous batching, `hybrid-agent serve`).

- `BatchState` packs the `ModelState`s of B conversations (batch 1 each, any lengths) into one state of
  batch B: recurrent tensors stacked along the batch axis, attention caches padded to a common number
  of slots. Row b's tokens sit in the slots where `valid[b]` is set, in order; a one-token step writes
  every row's new token into the same next slot. `row(b)` gives a row back as a state of its own
  (compacted: its valid slots, positions 0..n-1), so rows join and leave between steps by repacking.
- `BatchOps` is the plain `Ops` with per-row positions (RoPE at each row's own position) and attention
  over the padded caches with a per-row mask of the valid slots. Each mixer's forward is unchanged.
- Full attention only (no window), one token per row per step; MLA's latent attention is not batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from hybrid_agent.model.ops import Ops, gated, sdpa
from hybrid_agent.model.rope import rope_cos_sin
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor, nn

BATCHED_KINDS = frozenset({"attention", "gated_deltanet", "mamba2", "mlp", "short_conv", "kda"})


class BatchOps(Ops):
    """`Ops` for a one-token step of a `BatchState`: row b is at absolute position `pos[b]` and sees the
    cache slots where `valid[b]` is set."""

    def __init__(self, pos: Tensor, valid: Tensor) -> None:
        super().__init__()
        self.pos = pos  # (B,) long
        self.valid = valid  # (B, slots) bool, this step's slot included

    def positions(self, state: ModelState, T: int, device: torch.device) -> Tensor:
        if T != 1:
            raise ValueError("a batched step takes one token per row")
        return self.pos  # (B,)

    def rope(self, pos: Tensor, inv_freq: Tensor, theta: float) -> tuple[Tensor, Tensor]:
        key = (id(pos), inv_freq.shape[0], theta)
        got = self._rope.get(key)
        if got is None:
            cos, sin = rope_cos_sin(pos, inv_freq)  # (1, B, 1, R): one "token" per row
            got = self._rope[key] = (cos.transpose(0, 1), sin.transpose(0, 1))  # (B, 1, 1, R)
        return got

    def write(self, layer: LayerState, state: ModelState, new: dict[str, Tensor], pos: Tensor) -> None:
        slot = torch.full((1,), state.n_tokens, dtype=torch.long, device=self.pos.device)
        state.append_cache(layer, new, slot)  # every row's token into the same next slot

    def attend(
        self, mixer: nn.Module, layer: LayerState, state: ModelState, q: Tensor, pos: Tensor,
        gate: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        B, T, H, Dh = q.shape
        keys, values = layer.cache["k"], layer.cache["v"]  # (B, Hkv, L, Dh)
        Hkv, L = keys.shape[1], keys.shape[2]
        G = H // Hkv
        q = q.transpose(1, 2).reshape(B, Hkv, G * T, Dh)  # (B, Hkv, G, Dh)
        mask = self.valid[:, None, None, :L]  # (B, 1, 1, L)
        out = sdpa(q, keys.to(q.dtype), values.to(q.dtype), mask, 1.0 / math.sqrt(Dh))  # (B, Hkv, G, Dh)
        return gated(out.reshape(B, H, T, Dh).transpose(1, 2).reshape(B, T, H * Dh), gate)

    def attend_latent(self, *args: object, **kwargs: object) -> Tensor:
        raise NotImplementedError("MLA layers are not batched (model/batch.py)")


def batchable(model: nn.Module, window: int | None) -> bool:
    """Whether `BatchState` can run this model under this attention policy."""
    kinds = set(model.config.layer_types)
    return window is None and kinds <= BATCHED_KINDS


class BatchState:
    """B conversations' states as one state of batch B (see the module docstring)."""

    def __init__(self, rows: Sequence[ModelState]) -> None:
        if not rows:
            raise ValueError("a batch needs at least one row")
        self.n = [int(r.n_tokens) for r in rows]  # each row's token count
        first = rows[0]
        slots = max(self.n)
        device = next((t.device for ls in first.layers for t in ls.recurrent.values()), torch.device("cpu"))
        self.valid = torch.zeros(len(rows), slots, dtype=torch.bool, device=device)
        for b, n in enumerate(self.n):
            self.valid[b, :n] = True
        layers = []
        for i, ls in enumerate(first.layers):
            recurrent = {k: torch.cat([r.layers[i].recurrent[k] for r in rows]) for k in ls.recurrent}
            cache = {}
            for k, t in ls.cache.items():
                ax = ls.axes[k]
                shape = list(t.shape)
                shape[0], shape[ax] = len(rows), slots
                padded = t.new_zeros(shape)
                for b, r in enumerate(rows):
                    src = r.layers[i].cache[k]
                    padded[b : b + 1].narrow(ax, 0, src.shape[ax]).copy_(src)
                cache[k] = padded
            pos = None if ls.pos is None else torch.arange(slots, device=device)
            layers.append(LayerState(recurrent, cache, pos, dict(ls.axes), dense=True))
        self.state = ModelState(layers, first.layout, n_tokens=slots)

    @property
    def size(self) -> int:
        return len(self.n)

    @torch.inference_mode()
    def step(self, model: nn.Module, tokens: Sequence[int]) -> Tensor:
        """Feed one token to every row; the next-token logits (B, V)."""
        device = self.valid.device
        self.valid = torch.cat([self.valid, torch.ones(self.size, 1, dtype=torch.bool, device=device)], dim=1)
        ops = BatchOps(torch.tensor(self.n, dtype=torch.long, device=device), self.valid)
        ids = torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None]  # (B, 1)
        logits = model(ids, self.state, ops)[:, -1]  # (B, V)
        self.n = [n + 1 for n in self.n]
        return logits

    def row(self, b: int) -> ModelState:
        """Row b as a state of its own: its recurrent tensors and its valid cache slots, compacted."""
        idx = self.valid[b].nonzero().squeeze(1)  # (n_b,)
        layers = []
        for ls in self.state.layers:
            recurrent = {k: t[b : b + 1].clone() for k, t in ls.recurrent.items()}
            cache = {k: t[b : b + 1].index_select(ls.axes[k], idx) for k, t in ls.cache.items()}
            pos = None if ls.pos is None else torch.arange(len(idx), device=idx.device)
            layers.append(LayerState(recurrent, cache, pos, dict(ls.axes), dense=True))
        out = ModelState(layers, self.state.layout, n_tokens=self.n[b])
        out.keep_from = 0
        return out
