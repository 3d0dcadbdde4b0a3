"""A training forward pass for `HybridLM`.

`HybridLM.forward` is inference-only (it runs under `torch.inference_mode` and advances a state the
caller keeps). Training needs gradients and no state to keep, so this runs the very same blocks on a
fresh, throw-away `ModelState`: the numbers are those of inference (the test checks that), with
autograd on. Every op goes through kernels/; their torch references are differentiable, the Triton
kernels are forward-only, so set `HYBRID_AGENT_KERNELS=ref` when training on a GPU (train.py does).

Shared prefix: every chat episode starts with the same system segment (~900 tokens of tool schemas,
about 70% of an average episode). With `prefix`, it runs once per batch at batch size 1 and its state
(SSM/conv states, attention keys and values) is broadcast to every row, which then continues from
it. Each row computes exactly what it would have computed from the full episode, and the gradient
reaching the prefix is the sum over rows, as with the prefix repeated: same loss, same gradients
(up to float reordering), a fraction of the compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import LayerState, ModelState
from torch import Tensor


def broadcast_state(state: ModelState, batch_size: int) -> ModelState:
    """`state` (batch 1) seen by `batch_size` rows: expanded views (no copy; autograd sums the rows'
    gradients into the batch-1 tensors). Attention caches get no spare storage, so the first append
    copies them into a fresh buffer instead of writing into the shared one."""

    def grow(t: Tensor) -> Tensor:
        return t.expand(batch_size, *t.shape[1:])

    layers = [
        LayerState(
            {n: grow(t) for n, t in ls.recurrent.items()},
            {n: grow(t) for n, t in ls.cache.items()},
            ls.pos,
            dict(ls.axes),
            dense=ls.dense,
        )
        for ls in state.layers
    ]
    return ModelState(layers, state.layout, n_tokens=state.n_tokens, window=state.window, sinks=state.sinks)


def _run(model: HybridLM, input_ids: Tensor, state: ModelState) -> Tensor:
    x = model.embed_tokens(input_ids)  # (B, T, D)
    for block, layer in zip(model.layers, state.layers, strict=True):
        x = block(x, layer, state)  # (B, T, D)
    state.n_tokens += input_ids.shape[1]
    return x


def train_hidden(model: HybridLM, input_ids: Tensor, prefix: Tensor | None = None) -> Tensor:
    """Final normed hidden states (B, T, D) for `input_ids` (B, T): every row starts from an empty
    state, or from the state after `prefix` (P,) when given (the rows then hold what follows it)."""
    if prefix is None:
        state = model.new_state(batch_size=input_ids.shape[0])
    else:
        state = model.new_state(batch_size=1)
        _run(model, prefix[None], state)
        state = broadcast_state(state, input_ids.shape[0])
    return model.norm(_run(model, input_ids, state))


def output_weight(model: HybridLM) -> Tensor:
    return model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight


def train_forward(model: HybridLM, input_ids: Tensor, prefix: Tensor | None = None) -> Tensor:
    """Logits (B, T, V) for `input_ids` (B, T), as `train_hidden`."""
    with torch.enable_grad() if model.training else torch.no_grad():
        return F.linear(train_hidden(model, input_ids, prefix), output_weight(model))  # (B, T, V)
