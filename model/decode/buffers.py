"""`StaticState`: the decode engine's state in buffers allocated once, and the one-token step's inputs
and outputs.

The attention caches are views into buffers of `max_context` tokens and the recurrent tensors never
move, so a captured CUDA graph keeps reading and writing the right memory at any context. `state` is a
real `ModelState` between calls (snapshots, `cache_range` and `to_tensors` just work): its cache views
are re-narrowed to the token count after each call.
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels.greedy_advance import greedy_advance
from hybrid_agent.model.errors import ModelError, StateMismatchError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import ModelState
from torch import Tensor


class ContextFullError(ModelError, ValueError):
    """More tokens than the engine's `max_context`: build the engine with a larger one."""


class StaticState:
    """A `ModelState` whose caches live in `max_context`-token buffers, plus the step's buffers:
    `tok` (B, 1) the next input token, `pos` (1,) its position (on the device, so graphs read it), `ids`
    (B, max_context + 1) every token by position, `x` (B, 1, D) the residual stream, `logits` (B, V).
    `n` is the host copy of the token count, kept without syncing. With `per_row` (model/decode/rows.py)
    `pos` is (B,), each row's own position, `active` (B,) marks the slots that hold a request (`live` on
    the host) and `lens` is the host copy of each row's token count."""

    def __init__(
        self,
        model: HybridLM,
        max_context: int,
        batch_size: int,
        vocab_size: int | None,
        per_row: bool = False,
    ) -> None:
        self.max_context, self.device = max_context, model.device
        cfg = model.config
        B, V = batch_size, cfg.vocab_size
        with torch.inference_mode():
            self.state = self._allocate(model, batch_size)
            self.tok = torch.zeros(B, 1, dtype=torch.long, device=self.device)
            self.pos = torch.zeros(B if per_row else 1, dtype=torch.long, device=self.device)
            self.active = torch.zeros(B, dtype=torch.long, device=self.device)
            # One column past the end holds the greedy next token of a step that fills the last cache
            # slot (it has no cache position until it is fed, which `room` refuses).
            self.ids = torch.zeros(B, max_context + 1, dtype=torch.long, device=self.device)
            self.x = torch.zeros(B, 1, cfg.d_model, dtype=model.dtype, device=self.device)
            self.logits = torch.zeros(B, V, dtype=model.dtype, device=self.device)
            # What greedy picks from: the ids below `vocab_size` (the tokenizer's, when the model's
            # vocabulary is padded past it; padding ids have no text), a view of the logits buffer.
            self.greedy_logits = self.logits[:, : min(V, vocab_size or V)]
        self.n = 0
        self.per_row = per_row
        self.lens = [0] * B
        self.live = [False] * B  # host copy of `active`
        self.greedy_kernel = True  # `advance` through kernels.greedy_advance (False: torch ops)

    def _allocate(self, model: HybridLM, batch_size: int) -> ModelState:
        state = model.new_state(batch_size)
        for ls in state.layers:
            if ls.pos is None:
                continue
            for name, t in ls.cache.items():
                ax = ls.axes[name]
                shape = list(t.shape)
                shape[ax] = self.max_context
                ls.storage[name] = t.new_zeros(shape)  # (B, Hkv, max_context, Dh)
                ls.cache[name] = ls.storage[name].narrow(ax, 0, 0)
            ls.storage["pos"] = torch.zeros(self.max_context, dtype=torch.long, device=self.device)
            ls.pos = ls.storage["pos"].narrow(0, 0, 0)
        self.fixed = [dict(ls.recurrent) for ls in state.layers]  # the recurrent tensors that never move
        return state

    def room(self, n: int, extra: int) -> None:
        if n + extra > self.max_context:
            raise ContextFullError(
                f"{n} tokens in the state + {extra} new exceed max_context={self.max_context}; "
                "create the DecodeEngine with a larger max_context"
            )

    def pin(self) -> None:
        """After an eager call: copy recurrent tensors that the chunked kernels replaced back into the
        fixed ones, and check that no cache outgrew its buffer (which would mean a reallocation)."""
        for ls, fixed in zip(self.state.layers, self.fixed, strict=True):
            for name, t in fixed.items():
                if ls.recurrent[name] is not t:
                    t.copy_(ls.recurrent[name])
                    ls.recurrent[name] = t
            for name, buf in ls.storage.items():
                view = ls.pos if name == "pos" else ls.cache[name]
                assert view is not None and view.data_ptr() == buf.data_ptr(), "cache left its buffer"

    def set_views(self, n: int) -> None:
        """Every cache view and both counters at `n` tokens. Slot p holds position p (every load and
        write keeps it so), which the caches' `dense` says on the host (model/state.py)."""
        self.n = n
        for ls in self.state.layers:
            ls.dense = True
        self.narrow()
        self.pos.fill_(n)

    def narrow(self) -> None:
        """The cache views and the state's count at `n`: host-side bookkeeping only (cheap narrow()s);
        after a step the device counters are already right."""
        for ls in self.state.layers:
            if ls.pos is not None:
                for name in ls.cache:
                    ls.cache[name] = ls.storage[name].narrow(ls.axes[name], 0, self.n)
                ls.pos = ls.storage["pos"].narrow(0, 0, self.n)
        self.state.n_tokens = self.n

    def reset(self) -> None:
        """Forget every token (the buffers stay; recurrent states are zeroed)."""
        with torch.inference_mode():
            for fixed in self.fixed:
                for t in fixed.values():
                    t.zero_()
            self.set_views(0)

    def set_length(self, n_tokens: int) -> None:
        """Declare that the first `n_tokens` of every cache buffer and the recurrent tensors were written
        by the caller (benchmarks build long states this way); positions become 0..n-1."""
        self.room(n_tokens, 0)
        with torch.inference_mode():
            for ls in self.state.layers:
                if ls.pos is not None:
                    ls.storage["pos"][:n_tokens] = torch.arange(n_tokens, device=self.device)
            self.set_views(n_tokens)

    def load_state(self, state: ModelState) -> None:
        """Copy `state` (e.g. restored from a snapshot, on any device) into the buffers."""
        if state.layout != self.state.layout or state.batch_size != self.state.batch_size:
            raise StateMismatchError("this state belongs to another model or batch size than the engine's")
        if state.window is not None:
            raise StateMismatchError("the engine keeps full attention; load a state made with window=None")
        n = state.n_tokens
        self.room(n, 0)
        with torch.inference_mode():
            for ls, src, fixed in zip(self.state.layers, state.layers, self.fixed, strict=True):
                for name, t in fixed.items():
                    t.copy_(src.recurrent[name])
                if ls.pos is None or src.pos is None:
                    continue
                if len(src.pos) != n or not bool((src.pos.cpu() == torch.arange(n)).all()):
                    raise StateMismatchError("the state's cache does not hold every position 0..n-1")
                for name, t in src.cache.items():
                    ls.storage[name].narrow(ls.axes[name], 0, n).copy_(t)
                ls.storage["pos"][:n].copy_(src.pos)
            self.set_views(n)

    def write_kv(self, storage: dict[str, Tensor], k: Tensor, v: Tensor) -> None:
        """One token's keys and values (B, 1, Hkv, Dh) into an attention layer's buffers at `pos`."""
        storage["k"].index_copy_(2, self.pos, k.transpose(1, 2))  # (B, Hkv, max_context, Dh)
        storage["v"].index_copy_(2, self.pos, v.transpose(1, 2))
        storage["pos"].index_copy_(0, self.pos, self.pos)

    def advance(self) -> None:
        """Greedy next token into `tok` (callers of `step` overwrite it), pos + 1, ids[:, pos] = tok (the
        next input's position); kernels.greedy_advance: 3 launches instead of torch's single-block argmax
        (23 us) + 3 kernels. Per row: each active row's position + 1 and ids[b, pos[b]] = tok[b]."""
        if self.per_row:
            self.tok.copy_(self.greedy_logits.argmax(-1, keepdim=True))
            self.pos.add_(self.active)
            self.ids.scatter_(1, self.pos[:, None], self.tok)
            return
        if self.greedy_kernel:
            greedy_advance(self.greedy_logits, self.tok, self.pos, self.ids)
            return
        self.tok.copy_(self.greedy_logits.argmax(-1, keepdim=True))
        self.pos.add_(1)
        self.ids.index_copy_(1, self.pos, self.tok)
