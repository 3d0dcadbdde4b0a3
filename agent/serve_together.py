"""Joining requests prefilled together (`hybrid-agent serve --join-together`): the prompts of requests
admitted in the same iteration of the batch loop that start from the same saved state (none, or one
shared prefix such as a system prompt) run as the rows of one forward instead of one forward each.

Why: on a GPU a short prompt's prefill alone is bound by launching its kernels, not by the device
(~100 ms for a ~72-token first turn at OLMo Hybrid 7B's shape, ~1,870 kernels; docs/results.md, the
serve section), so 32 sessions arriving together spend ~3 s in admissions while the batch waits. One
forward of 32 rows launches the same kernels once.

How: `Scheduler.begin(defer=True, feed=...)` leaves a row's whole unrestored prompt in `row.pending`
with its saved prefix in `row.start` (the step-fed path). Rows whose prefix is the same entry (same
tokens, same state) are grouped; each round prefills, for every row still holding more than
`join_feed_tokens` pending tokens before its last, the shortest such count m (all rows at one
position, so the plain model path runs them as one batch: no masks, no padding); rows with fewer left
go on as the step-fed rows do (one token a step), and the prompt's last token is always fed by the
batch's step, whose logits give the first token. Equal to each row prefilled alone up to the rounding
of a batched matmul (tests/agent/test_serve_together.py compares answers with the solo runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hybrid_agent.model.decode.step import embed
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.state import LayerState, ModelState
from torch import nn

# Tokens of one forward over all rows together (rows x tokens a row): the engine's prefill chunks'
# order of size, so activations stay bounded whatever the number of rows.
TOKENS_PER_FORWARD = 8192


def stacked(states: Sequence[ModelState]) -> ModelState:
    """Batch-1 states at one token count as one state of batch len(states) (copies)."""
    first = states[0]
    if any(s.n_tokens != first.n_tokens or s.batch_size != 1 for s in states):
        raise ValueError("rows prefilled together start at one token count, batch 1 each")
    layers = []
    for i, ls in enumerate(first.layers):
        recurrent = {k: torch.cat([s.layers[i].recurrent[k] for s in states]) for k in ls.recurrent}
        cache = {k: torch.cat([s.layers[i].cache[k] for s in states]) for k in ls.cache}
        pos = None if ls.pos is None else ls.pos.clone()
        layers.append(LayerState(recurrent, cache, pos, dict(ls.axes), dense=ls.dense))
    return ModelState(layers, first.layout, n_tokens=first.n_tokens, window=first.window, sinks=first.sinks)


def row_of(state: ModelState, b: int) -> ModelState:
    """Row b of a batched state as a batch-1 state of its own (copies)."""
    layers = []
    for ls in state.layers:
        recurrent = {k: t[b : b + 1].clone() for k, t in ls.recurrent.items()}
        cache = {k: t[b : b + 1].clone() for k, t in ls.cache.items()}
        pos = None if ls.pos is None else ls.pos.clone()
        layers.append(LayerState(recurrent, cache, pos, dict(ls.axes), dense=ls.dense))
    return ModelState(layers, state.layout, n_tokens=state.n_tokens, window=state.window, sinks=state.sinks)


@torch.inference_mode()
def prefill_rows(
    model: nn.Module, states: Sequence[ModelState], tails: Sequence[Sequence[int]]
) -> list[ModelState]:
    """Each of `states` (batch 1, one token count) advanced over its tail (all of one length), as one
    batched forward per chunk; new batch-1 states, the given ones unchanged."""
    if len(states) != len(tails) or not tails or len({len(t) for t in tails}) != 1:
        raise ValueError("one tail per state, all of one length")
    state = stacked(states)
    device = next(model.parameters()).device
    ids = torch.tensor([list(t) for t in tails], dtype=torch.long, device=device)  # (B, T)
    chunk = max(1, TOKENS_PER_FORWARD // len(tails))
    for start in range(0, ids.shape[1], chunk):
        part = ids[:, start : start + chunk]  # (B, t)
        h, ops = embed(model, part), Ops()  # (B, t, D); the model's own path, as the engine's prefill
        ops.begin()
        for block, layer in zip(model.layers, state.layers, strict=True):
            h = block(h, layer, state, ops)  # (B, t, D)
        state.n_tokens += part.shape[1]
    return [row_of(state, b) for b in range(len(tails))]
