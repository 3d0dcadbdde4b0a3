"""Where `hybrid-agent serve`'s batched rows live between steps (agent/serve_batch.py): the decode engine's
per-row slots or the model's own batch.

- `EngineRows`: a `DecodeEngine(per_row=True)` (model/decode/rows.py) with one slot per concurrent
  request; its one-token step is captured once as a CUDA graph on CUDA and replayed at any mix of
  lengths. A joining row is loaded into a free slot, a leaving one exported from its slot; nothing is
  recaptured. Its buffers hold `max_context` tokens per slot: sized to the longest row with room to
  grow (x1.5, whole 256-token blocks), and rebuilt larger (rows moved over) when a row outgrows them.
- `ModelRows`: model/batch.py's `BatchState` on the model's own forward (uncaptured), repacked when rows
  join or leave. Used when the engine cannot run the model per row, when the live engine is not the
  DecodeEngine (the CPU by default), or with HYBRID_AGENT_BATCH_ENGINE=0.
Both keep the rows in join order; `step` takes and returns them in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hybrid_agent.model.batch import BatchState
from hybrid_agent.model.state import ModelState, Page
from hybrid_agent.model.switches import env_switch
from torch import Tensor

BATCH_ENGINE_ENV = "HYBRID_AGENT_BATCH_ENGINE"  # auto (default: when the DecodeEngine runs) | 1 | 0
# Slot buffers in whole blocks of this many tokens: small, since every slot has them (64 slots of 256
# tokens at OLMo Hybrid 7B's 8 attention layers, ~1 MB a token, are 16 GB).
_BLOCK = 256


def _state(
    model: Any, device: torch.device, recurrent: dict[str, Tensor], pages: Sequence[Page]
) -> ModelState:
    """A saved state (`recurrent_tensors()` and cache pages) as a batch-1 state on `device` (full
    attention: the batch has no window), its tensors new (`from_parts` never aliases the given ones)."""
    state = ModelState.from_parts(
        {k: v.to(device) for k, v in recurrent.items()},
        [(p.start, p.end, {k: v.to(device) for k, v in p.tensors.items()}) for p in pages],
        getattr(model, "local_config", None) or model.config,
    )
    return state.to(device)


class ModelRows:
    """The model's own batched forward (model/batch.py)."""

    kind = "model"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.batch: BatchState | None = None

    def _states(self) -> list[ModelState]:
        return [] if self.batch is None else [self.batch.row(b) for b in range(self.batch.size)]

    def join(self, states: Sequence[ModelState]) -> None:
        rows = [*self._states(), *states]
        self.batch = BatchState(rows) if rows else None

    def leave(self, idx: Sequence[int]) -> list[ModelState]:
        """Rows `idx` (positions in join order) out, as states of their own; the rest stay in order."""
        states = self._states()
        gone = set(idx)
        stay = [s for b, s in enumerate(states) if b not in gone]
        self.batch = BatchState(stay) if stay else None
        return [states[b] for b in idx]

    def state(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> ModelState:
        """A saved state as a batch-1 state to `join`."""
        return _state(self.model, next(self.model.parameters()).device, recurrent, pages)

    def view(self, i: int) -> ModelState:
        """Row `i` (join order) as a state of its own (here a copy), to read before the next step."""
        assert self.batch is not None
        return self.batch.row(i)

    def step(self, tokens: Sequence[int]) -> Tensor:
        assert self.batch is not None
        return self.batch.step(self.model, tokens)

    def warm(self) -> bool:
        """Nothing to build ahead: the batch is packed from its rows at each join. False: not warmed."""
        return False


class EngineRows:
    """The decode engine's per-row slots (see the module doc)."""

    kind = "engine"

    def __init__(self, model: Any, slots: int, vocab_size: int | None, min_context: int = _BLOCK) -> None:
        self.model, self.slots, self.vocab_size = model, slots, vocab_size
        self.min_context = min_context
        self.order: list[int] = []  # the slot of each row, in join order
        self._index: tuple[list[int], Tensor | None] = ([-1], None)  # `_order_index`'s last order
        self.builds = 0  # buffers built so far (each build captures its step again on CUDA)
        self.engine = self._build(min_context)

    def _build(self, need: int) -> Any:
        from hybrid_agent.model.decode.engine import DecodeEngine

        size = max(self.min_context, need + need // 2)
        size = -(-size // _BLOCK) * _BLOCK
        self.builds += 1
        return DecodeEngine(self.model, max_context=size, batch_size=self.slots, per_row=True,
                            vocab_size=self.vocab_size)  # fmt: skip

    def _fit(self, need: int) -> None:
        """Buffers for `need` tokens in a slot: rebuilt larger with the rows moved over when they are not."""
        if need <= self.engine.max_context:
            return
        states = [self.engine.export_row(b) for b in self.order]
        self.engine = None  # the old buffers go before the new ones are allocated
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.engine = self._build(need)
        for b, state in zip(self.order, states, strict=True):
            self.engine.load_row(b, state)

    def join(self, states: Sequence[ModelState]) -> None:
        for state in states:
            self._fit(int(state.n_tokens) + 1)
            b = self.engine.free_rows[0]  # as many slots as concurrent requests
            self.engine.load_row(b, state)
            self.order.append(b)

    def join_parts(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        """A saved state straight into a free slot (`DecodeEngine.load_row_parts`: one copy per page and
        tensor, no device read), instead of a state built from it first and copied in (`state`, `join`)."""
        self._fit(int(recurrent["n_tokens"]) + 1)
        b = self.engine.free_rows[0]
        self.engine.load_row_parts(b, recurrent, pages)
        self.order.append(b)

    def leave(self, idx: Sequence[int]) -> list[ModelState]:
        out = []
        for i in idx:
            out.append(self.engine.export_row(self.order[i]))
            self.engine.clear_row(self.order[i])
        gone = set(idx)
        self.order = [b for i, b in enumerate(self.order) if i not in gone]
        return out

    def state(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> ModelState:
        """A saved state as a batch-1 state to `join`."""
        return _state(self.model, self.engine.device, recurrent, pages)

    def view(self, i: int) -> ModelState:
        """Row `i` (join order) as a state of views into its slot (no copy of a long cache): read it
        before the next step, join or leave."""
        return self.engine.view_row(self.order[i])

    def step(self, tokens: Sequence[int]) -> Tensor:
        eng = self.engine
        self._fit(max(eng.row_lengths[b] for b in self.order) + 1)
        eng = self.engine
        feed = [0] * self.slots  # empty slots take token 0 (their outputs are never read)
        for b, tok in zip(self.order, tokens, strict=True):
            feed[b] = tok
        logits = eng.step(torch.tensor(feed, dtype=torch.long, device=eng.device))  # (slots, V)
        return logits[self._order_index()]  # (rows, V), join order

    def _order_index(self) -> Tensor:
        """The slots in join order as a device index, made again only when rows joined or left: each
        copy to the device waits for it, and lets another thread take the interpreter lock."""
        if self._index[0] != self.order:
            self._index = (list(self.order), torch.tensor(self.order, device=self.engine.device))
        return self._index[1]

    def warm(self) -> bool:
        """One step on the empty slots (their outputs are never read; each is cleared after), so that
        the first request's step replays a captured graph instead of compiling and capturing one."""
        if self.order:
            return False
        eng = self.engine
        eng.step(torch.zeros(self.slots, dtype=torch.long, device=eng.device))
        wait_for_model(eng.device)
        for b in range(self.slots):
            eng.clear_row(b)
        return True


def wait_for_model(device: torch.device | str) -> None:
    """Wait for the work this thread queued on `device` (its current stream): the batch's step, a
    joining request's restore or prefill. Not `torch.cuda.synchronize`, which waits for every stream of
    the device, the prefix writer's copies of saved states to the host among them
    (agent/serve_tiers.py): those can run for seconds after a long conversation's turn."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def make_rows(engine: Any, slots: int) -> EngineRows | ModelRows:
    """The decode engine's slots when the serving engine runs on the DecodeEngine (or the environment
    asks for them) and the engine can run this model per row; else the model's own batch."""
    from hybrid_agent.model.errors import StateMismatchError

    env = env_switch(BATCH_ENGINE_ENV)
    want = bool(getattr(engine, "uses_decode_engine", False)) if env is None else env
    if want and engine.window is None:
        try:
            return EngineRows(engine.model, slots, getattr(engine, "_vocab_size", None))
        except StateMismatchError:  # layers the engine's step does not run: the model's own batch
            pass
    return ModelRows(engine.model)
