"""`ModelState`: everything a `HybridLM` remembers between calls, explicit and serialisable.

Design choices:
- Per layer, a `LayerState` holds fixed-size `recurrent` tensors (conv windows, SSM / delta-rule
  states; always fp32 so a long session does not drift) and a growing attention `cache` whose tensors
  have a token axis, with `pos`: the absolute position of each cached token.
- The layout of every layer kind is a `StateSpec` derived from the config alone (model/state_layout.py),
  so a state can be validated against a config without building the model.
- Window policy: a query at absolute position q sees keys j <= q with j > q - window, plus the first
  `sinks` tokens. After each call the cache keeps the sinks and the last `window` tokens (and every
  token at or after `keep_from`, so a snapshot can still save pages that left the window since the
  last one); the rest is evicted, in batches of `evict_slack` tokens so that decode does not move the
  window every token (stale tokens are masked, never seen). Positions stay absolute, so prefill in
  chunks sees exactly the keys a one-shot prefill sees.
- Cache tensors are views into storage with room to grow: appending T tokens copies T tokens.
- `LayerState.dense` is a host-side fact: the cache holds positions 0..L-1 in order (an empty cache,
  appends that go on where it ends, a state loaded with exactly those positions). Attention reads it
  to run a causal kernel without a mask (model/ops.py) without reading positions from the device.
- Flat names for storage: `n_tokens`, `window` (-1 = none), `sinks`, `layers.{i}.{name}` for each
  recurrent and cache tensor and `layers.{i}.pos`. `from_tensors` is the exact inverse of `to_tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.state_layout import (  # re-exported: the layout is part of the state's API
    STATE_SPECS,
    TOKEN_AXIS,
    StateSpec,
    empty_shape,
    state_layout,
    token_axes,
    token_axis,
)
from torch import Tensor

__all__ = [
    "STATE_SPECS",
    "TOKEN_AXIS",
    "LayerState",
    "ModelState",
    "Page",
    "StateSpec",
    "attention_policy",
    "state_layout",
]


class Page(NamedTuple):
    """Attention-cache tensors for the absolute token positions [start, end): `cache_range(start, end)`.

    The one page type: the engine snapshots it, the store (memory/) saves and loads it, and a list of
    pages is the `(start, end, tensors)` triples that `ModelState.from_parts` takes.
    """

    start: int
    end: int
    tensors: dict[str, Tensor]


def attention_policy(cfg: HybridConfig, window: int | None, sinks: int) -> tuple[int | None, int]:
    """The effective (window, sinks): the smaller of the runtime and config windows; no sinks without one."""
    windows = [w for w in (window, cfg.attention.sliding_window) if w is not None]
    if window is not None and window < 1:
        raise StateMismatchError(f"window must be >= 1 or None for full attention (got {window})")
    if sinks < 0:
        raise StateMismatchError(f"sinks must be >= 0 (got {sinks})")
    if not windows:
        return None, 0
    return min(windows), max(sinks, cfg.attention.sink_tokens)


@dataclass
class LayerState:
    recurrent: dict[str, Tensor]  # fixed size, fp32
    cache: dict[str, Tensor]  # token axis as in the layer's StateSpec
    pos: Tensor | None  # (L,) int64 absolute positions of the cached tokens; None without a cache
    axes: dict[str, int] = field(default_factory=dict)  # token axis of each cache tensor
    # Room to grow: `cache` and `pos` are views of the first L slots of these, so appending a token
    # copies only that token (amortised), not the whole cache.
    storage: dict[str, Tensor] = field(default_factory=dict, repr=False)
    # Known on the host: `pos` is 0, 1, ..., L-1 (False where unknown; see the module docstring).
    dense: bool = False

    def _set(self, name: str, view: Tensor) -> None:
        if name == "pos":
            self.pos = view
        else:
            self.cache[name] = view

    def _get(self, name: str) -> Tensor:
        assert self.pos is not None
        return self.pos if name == "pos" else self.cache[name]

    def append(
        self, new: dict[str, Tensor], new_pos: Tensor, *, capacity_limit: int | None, first: int | None = None
    ) -> None:
        """Add T tokens (each cache tensor and their positions). Storage grows by doubling, up to
        `capacity_limit` tokens when the window bounds the cache. `first`: known on the host, new_pos is
        first, first + 1, ... (None: not known), which keeps `dense` when it goes on where the cache ends."""
        assert self.pos is not None
        L, T = len(self.pos), len(new_pos)
        self.dense = self.dense and first == L
        for name, t in (*new.items(), ("pos", new_pos)):
            ax = 0 if name == "pos" else self.axes[name]
            buf = self.storage.get(name)
            if buf is None or buf.shape[ax] < L + T:
                grown = 2 * L + 64 if capacity_limit is None else min(2 * L + 64, capacity_limit)
                old = self._get(name)
                shape = list(old.shape)
                shape[ax] = max(L + T, grown)
                buf = old.new_empty(shape)
                buf.narrow(ax, 0, L).copy_(old)
                self.storage[name] = buf
            buf.narrow(ax, L, T).copy_(t)
            self._set(name, buf.narrow(ax, 0, L + T))

    def keep(self, idx: Tensor) -> None:
        """Keep only the cached tokens at indices `idx` (sorted), compacted in place at the front."""
        assert self.pos is not None
        self.dense = self.dense and len(idx) == len(self.pos)  # all kept: still in order
        for name in (*self.cache, "pos"):
            ax = 0 if name == "pos" else self.axes[name]
            kept = self._get(name).index_select(ax, idx)
            buf = self.storage.get(name)
            if buf is None:
                self._set(name, kept)
            else:
                buf.narrow(ax, 0, len(idx)).copy_(kept)
                self._set(name, buf.narrow(ax, 0, len(idx)))

    def copy(self) -> LayerState:
        """A deep copy without spare room."""
        return LayerState(
            {n: t.clone() for n, t in self.recurrent.items()},
            {n: t.clone() for n, t in self.cache.items()},
            None if self.pos is None else self.pos.clone(),
            dict(self.axes),
            dense=self.dense,
        )


class ModelState:
    """The recurrent states and attention caches of every layer, plus the token count."""

    def __init__(
        self,
        layers: list[LayerState],
        layout: tuple[tuple[str, StateSpec], ...],
        *,
        n_tokens: int = 0,
        window: int | None = None,
        sinks: int = 0,
    ) -> None:
        self.layers = layers
        self.layout = layout
        self.n_tokens = n_tokens
        self.window = window  # effective policy (see attention_policy)
        self.sinks = sinks
        self.keep_from: int | None = None  # cached tokens at positions >= this are never evicted

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def empty(
        cls,
        cfg: HybridConfig,
        batch_size: int = 1,
        *,
        window: int | None = None,
        sinks: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ModelState:
        layout = state_layout(cfg)
        layers = []
        for _, spec in layout:
            rec = {
                n: torch.zeros(batch_size, *s, device=device, dtype=torch.float32)
                for n, s in spec.recurrent.items()
            }
            cache = {
                n: torch.zeros(batch_size, *empty_shape(s), device=device, dtype=dtype)
                for n, s in spec.cache.items()
            }
            pos = torch.zeros(0, dtype=torch.long, device=device) if spec.cache else None
            layers.append(LayerState(rec, cache, pos, token_axes(spec), dense=True))
        w, s = attention_policy(cfg, window, sinks)
        return cls(layers, layout, window=w, sinks=s)

    @property
    def batch_size(self) -> int:
        for ls in self.layers:
            for t in (*ls.recurrent.values(), *ls.cache.values()):
                return t.shape[0]
        return 1  # an all-MLP model has no state tensors

    @property
    def nbytes(self) -> int:
        """Bytes of the state's content (what `to_tensors` returns; spare cache room not counted)."""
        total = sum(t.nbytes for t in self._header().values())
        for ls in self.layers:
            tensors = [*ls.recurrent.values(), *ls.cache.values(), *([] if ls.pos is None else [ls.pos])]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    def clone(self) -> ModelState:
        layers = [ls.copy() for ls in self.layers]
        out = ModelState(layers, self.layout, n_tokens=self.n_tokens, window=self.window, sinks=self.sinks)
        out.keep_from = self.keep_from
        return out

    def to(self, device: torch.device | str) -> ModelState:
        """Move every tensor to `device` in place; returns self."""
        for ls in self.layers:
            ls.recurrent = {n: t.to(device) for n, t in ls.recurrent.items()}
            ls.cache = {n: t.to(device) for n, t in ls.cache.items()}
            ls.pos = None if ls.pos is None else ls.pos.to(device)
            ls.storage = {}
        return self

    # ---- the window policy -----------------------------------------------------------------------
    @property
    def evict_slack(self) -> int:
        """Tokens past the window that may linger before a compaction (so decode does not move the
        whole window every token); invisible to queries, so exactness does not depend on it."""
        return 0 if self.window is None else max(1, min(64, self.window // 8))

    def append_cache(
        self, layer: LayerState, new: dict[str, Tensor], new_pos: Tensor, first: int | None = None
    ) -> None:
        """Add the new tokens' cache entries of one attention layer (before attending); `first` as in
        `LayerState.append`."""
        limit = None
        if self.window is not None and self.keep_from is None:
            limit = self.sinks + self.window + self.evict_slack + len(new_pos)
        layer.append(new, new_pos, capacity_limit=limit, first=first)

    def _needed(self) -> int:
        """How many cached tokens the policy keeps: [0, sinks) and [lo, n) with lo the start of the
        window or keep_from, whichever is earlier. Host arithmetic only (no device sync per token)."""
        assert self.window is not None
        n = self.n_tokens
        lo = max(0, n - self.window)
        if self.keep_from is not None:
            lo = min(lo, max(0, self.keep_from))
        return min(self.sinks, lo) + (n - lo)

    @torch.inference_mode()  # the cache may hold inference tensors (see HybridLM.forward)
    def evict(self, i: int) -> None:
        """Drop the cached tokens of layer `i` that no future query can see (see the module docstring)."""
        layer = self.layers[i]
        if self.window is None or layer.pos is None:
            return
        droppable = len(layer.pos) - self._needed()  # held tokens are a superset of the needed ones
        if droppable <= 0 or droppable < self.evict_slack:
            return
        keep = (layer.pos < self.sinks) | (layer.pos >= self.n_tokens - self.window)
        if self.keep_from is not None:
            keep |= layer.pos >= self.keep_from
        layer.keep(keep.nonzero().squeeze(1))  # (L',)

    # ---- flat tensors ----------------------------------------------------------------------------
    def _header(self) -> dict[str, Tensor]:
        return {
            "n_tokens": torch.tensor(self.n_tokens, dtype=torch.long),
            "window": torch.tensor(-1 if self.window is None else self.window, dtype=torch.long),
            "sinks": torch.tensor(self.sinks, dtype=torch.long),
        }

    def recurrent_tensors(self) -> dict[str, Tensor]:
        """Everything except the attention caches: small, constant size. Copies: later calls of the
        model do not change them (safe to write out in the background)."""
        out = self._header()
        for i, ls in enumerate(self.layers):
            out.update({f"layers.{i}.{n}": t.clone() for n, t in ls.recurrent.items()})
        return out

    def cache_range(self, start: int, end: int) -> dict[str, Tensor]:
        """The attention caches for absolute positions [start, end) that are still held in memory."""
        out: dict[str, Tensor] = {}
        for i, ((_, spec), ls) in enumerate(zip(self.layout, self.layers, strict=True)):
            if ls.pos is None:
                continue
            idx = ((ls.pos >= start) & (ls.pos < end)).nonzero().squeeze(1)  # (L',)
            for n, s in spec.cache.items():
                out[f"layers.{i}.{n}"] = ls.cache[n].index_select(token_axis(s), idx)
            out[f"layers.{i}.pos"] = ls.pos[idx]
        return out

    def to_tensors(self) -> dict[str, Tensor]:
        """Every tensor of the state under its stable name (contiguous copies)."""
        out = self.recurrent_tensors()
        for i, ls in enumerate(self.layers):
            out.update(
                {
                    f"layers.{i}.{n}": t.clone(memory_format=torch.contiguous_format)
                    for n, t in ls.cache.items()
                }
            )
            if ls.pos is not None:
                out[f"layers.{i}.pos"] = ls.pos.clone()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], cfg: HybridConfig) -> ModelState:
        """The exact inverse of `to_tensors`; raises StateMismatchError if they do not fit `cfg`."""
        layout = state_layout(cfg)
        expected = set(cls._names(layout))
        got = set(tensors)
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            raise StateMismatchError(
                "these state tensors do not belong to this model's config "
                f"(missing: {missing[:6]}{'...' if len(missing) > 6 else ''}; "
                f"unexpected: {extra[:6]}{'...' if len(extra) > 6 else ''}); "
                "load the state with the model it was saved from"
            )
        n_tokens = int(tensors["n_tokens"])
        window = int(tensors["window"])
        sinks = int(tensors["sinks"])
        return cls._assemble(tensors, layout, n_tokens, None if window < 0 else window, sinks)

    @classmethod
    def from_parts(
        cls,
        recurrent: dict[str, Tensor],
        pages: list[tuple[int, int, dict[str, Tensor]]],
        cfg: HybridConfig,
        *,
        window: int | None = None,
        sinks: int = 0,
    ) -> ModelState:
        """Rebuild a state from `recurrent_tensors()` and cache pages `(start, end, cache_range(start, end))`.

        The window policy given here wins over the one saved in `recurrent`; only the tokens it keeps are
        needed (all of them with `window=None`), and a missing one raises StateMismatchError.
        """
        layout = state_layout(cfg)
        if "n_tokens" not in recurrent:
            raise StateMismatchError("recurrent tensors lack 'n_tokens'; pass what recurrent_tensors() gave")
        n_tokens = int(recurrent["n_tokens"])
        w, s = attention_policy(cfg, window, sinks)
        need = torch.arange(n_tokens)
        if w is not None:
            need = need[(need < s) | (need >= n_tokens - w)]
        tensors = {k: v for k, v in recurrent.items() if k not in ("window", "sinks")}
        tensors.update(window=torch.tensor(-1 if w is None else w), sinks=torch.tensor(s))
        for i, (_, spec) in enumerate(layout):
            if not spec.cache:
                continue
            parts = [p for _, _, p in sorted(pages, key=lambda p: p[0]) if f"layers.{i}.pos" in p]
            pos = torch.cat([p[f"layers.{i}.pos"].cpu() for p in parts] or [torch.zeros(0, dtype=torch.long)])
            order = torch.argsort(pos, stable=True)
            sorted_pos = pos[order]
            where = torch.searchsorted(sorted_pos, need).clamp(max=max(len(pos) - 1, 0))  # (N,)
            covered = len(need) == 0 or (len(pos) > 0 and bool((sorted_pos[where] == need).all()))
            if not covered:
                raise StateMismatchError(
                    f"the cache pages do not cover the {len(need)} tokens layer {i} needs "
                    f"(of positions 0..{n_tokens - 1}); pass every page overlapping the sinks and the window"
                )
            idx = order[where]  # (N,) index into the concatenated pages
            for n, shape in spec.cache.items():
                ax = token_axis(shape)
                if parts:
                    full = torch.cat([p[f"layers.{i}.{n}"] for p in parts], dim=ax)
                    tensors[f"layers.{i}.{n}"] = full.index_select(ax, idx.to(full.device))
            tensors[f"layers.{i}.pos"] = need.clone()
            if not parts:  # nothing needed and no page: an empty cache shaped like the spec
                batch = next((t.shape[0] for k, t in recurrent.items() if k.startswith("layers.")), 1)
                for n, shape in spec.cache.items():
                    tensors[f"layers.{i}.{n}"] = torch.zeros(batch, *empty_shape(shape))
        return cls.from_tensors(tensors, cfg)

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _names(layout: tuple[tuple[str, StateSpec], ...]) -> list[str]:
        names = ["n_tokens", "window", "sinks"]
        for i, (_, spec) in enumerate(layout):
            names += [f"layers.{i}.{n}" for n in (*spec.recurrent, *spec.cache)]
            if spec.cache:
                names.append(f"layers.{i}.pos")
        return names

    @classmethod
    def _assemble(
        cls,
        t: dict[str, Tensor],
        layout: tuple[tuple[str, StateSpec], ...],
        n_tokens: int,
        window: int | None,
        sinks: int,
    ) -> ModelState:
        layers: list[LayerState] = []
        batch: int | None = None
        for i, (kind, spec) in enumerate(layout):
            for n, want in (*spec.recurrent.items(), *spec.cache.items()):
                got = tuple(t[f"layers.{i}.{n}"].shape)
                batch = got[0] if batch is None else batch
                ok = len(got) == len(want) + 1 and got[0] == batch
                ok = ok and all(w in (TOKEN_AXIS, g) for w, g in zip(want, got[1:], strict=False))
                if not ok:
                    raise StateMismatchError(
                        f"state tensor layers.{i}.{n} ({kind}) has shape {got}, but this config needs "
                        f"(batch, {', '.join('tokens' if d == TOKEN_AXIS else str(d) for d in want)}); "
                        "load the state with the model it was saved from"
                    )
            rec = {n: t[f"layers.{i}.{n}"].float().clone() for n in spec.recurrent}
            cache = {n: t[f"layers.{i}.{n}"].clone() for n in spec.cache}
            pos = t[f"layers.{i}.pos"].long().clone() if spec.cache else None
            if pos is not None:
                lengths = {cache[n].shape[token_axis(s)] for n, s in spec.cache.items()}
                if lengths != {len(pos)} or (len(pos) and int(pos.max()) >= n_tokens):
                    raise StateMismatchError(
                        f"layer {i}: cache holds {lengths} tokens but pos lists {len(pos)} "
                        f"(positions must be < n_tokens={n_tokens}); the state is corrupt"
                    )
            # Positions on the host are checked for 0..L-1 here (from_parts gives them so); on a device
            # that would be a read, so such a cache counts as not dense (attention keeps its mask).
            dense = pos is not None and pos.device.type == "cpu" and torch.equal(pos, torch.arange(len(pos)))
            layers.append(LayerState(rec, cache, pos, token_axes(spec), dense=dense))
        return cls(layers, layout, n_tokens=n_tokens, window=window, sinks=sinks)
