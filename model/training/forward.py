"""A training forward pass for `HybridLM`.

`HybridLM.forward` is inference-only (it runs under `torch.inference_mode` and advances a state the
caller keeps). Training needs gradients and no state to keep, so this runs the very same blocks on a
fresh, throw-away `ModelState`: the numbers are those of inference (the test checks that), with
autograd on. Every op goes through kernels/; their torch references are differentiable, the Triton
kernels are forward-only, so set `HYBRID_AGENT_KERNELS=ref` when training on a GPU (train.py does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.hybrid import HybridLM


def train_forward(model: HybridLM, input_ids: Tensor) -> Tensor:
    """Logits (B, T, V) for `input_ids` (B, T), every row starting from an empty state."""
    state = model.new_state(batch_size=input_ids.shape[0])
    with torch.enable_grad() if model.training else torch.no_grad():
        x = model.embed_tokens(input_ids)  # (B, T, D)
        for block, layer in zip(model.layers, state.layers, strict=True):
            x = block(x, layer, state)  # (B, T, D)
        x = model.norm(x)  # (B, T, D)
        weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        return F.linear(x, weight)  # (B, T, V)
