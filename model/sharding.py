"""A model's and a state's tensor-parallel shards (the rules are model/parallel.py's).

- `shard_model(full, tp)`: the rank's `HybridLM` from the full model: each weight cut by its rule,
  the full model's fingerprint kept (the session's model identity does not depend on the layout).
- `gather_state(state, model)`: every rank's state tensors gathered into the full layout's
  (`ModelState.to_tensors` of the tp=1 state, on every rank); `split_state(tensors, model)` is the
  inverse, a rank's `ModelState` from the full layout's tensors. Saving the full layout and re-splitting
  on load is what lets a state saved at one tp resume at any other: both are copies, exact.
"""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.parallel import TensorParallel, gather, shard, state_rules, weight_rules
from hybrid_agent.model.state import ModelState
from torch import Tensor


@torch.no_grad()
def shard_model(full: HybridLM, tp: TensorParallel) -> HybridLM:
    """Rank `tp.rank`'s shard of `full` (on `full`'s device and dtype)."""
    if tp.world == 1:
        return full
    fingerprint = full.fingerprint
    with torch.device("meta"):
        local = HybridLM(full.config, tp)
    local = local.to_empty(device=full.device).to(full.dtype)
    rules = weight_rules(full.config)
    mine = local.state_dict(keep_vars=True)
    for name, t in full.state_dict().items():
        part = shard(t, rules.get(name), tp.rank, tp.world)
        target = mine[name]
        assert part.shape == target.shape, f"{name}: shard {tuple(part.shape)} for {tuple(target.shape)}"
        target.data = part.to(dtype=target.dtype).contiguous()
    for module in local.modules():  # buffers no checkpoint holds (RoPE frequencies)
        reset = getattr(module, "reset_buffers", None)
        if reset is not None:
            reset()
    local.eval()
    local._fingerprint = fingerprint
    return local


def gather_state(state: ModelState, model: HybridLM) -> dict[str, Tensor]:
    """The full layout's state tensors (as a tp=1 model's `state.to_tensors()`), on every rank."""
    tensors = state.to_tensors()
    tp = model.tp
    if tp.world == 1:
        return tensors
    return gather_tensors(tp, tensors, state_rules(model.config))


def gather_tensors(
    tp: TensorParallel, tensors: dict[str, Tensor], rules: dict[str, Any], wire: torch.device | None = None
) -> dict[str, Tensor]:
    """The full layout's tensors from every rank's (rank order), each back where the rank's was; a
    tensor without a rule is the same on every rank and kept. `wire`: the device the group moves
    tensors on (NCCL: CUDA), when they may live elsewhere."""
    out = {}
    for name, t in tensors.items():
        rule = rules.get(name)
        if rule is None:
            out[name] = t
            continue
        x = t.contiguous() if wire is None else t.contiguous().to(wire)
        out[name] = gather(list(torch.chunk(tp.all_gather(x, 0).to(t.device), tp.world)), rule)
    return out


def split_state(tensors: dict[str, Tensor], model: HybridLM) -> ModelState:
    """This rank's `ModelState` from the full layout's tensors (`gather_state`, or a tp=1 state's)."""
    rules = state_rules(model.config)
    tp = model.tp
    mine = {n: shard(t, rules.get(n), tp.rank, tp.world) for n, t in tensors.items()}
    return ModelState.from_tensors(mine, model.local_config)
