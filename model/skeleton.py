"""`skeleton(cfg)`: a `HybridLM` with the layout of `cfg` and no memory or initialisation for its weights,
for a loader that gives it storage (`to_empty`) and fills every weight from a checkpoint.

Why not just build it under `torch.device("meta")`: the random initialisation and the small SSM
parameter computations (arange, log, rand, ...) then run on meta tensors, and many of those ops have
their meta kernels in torch's Python references, whose first call imports torch._dynamo: seconds of
every start (docs/results.md, cold start), for values that are overwritten anyway. Here, under the meta
device, small tensors (at most `SMALL` elements: norms, per-head parameters, RoPE tables) are made on
the CPU, where those ops are plain kernels, and writes into the large meta tensors (init, copy_,
fill_) are skipped. The values are meaningless either way: `to_empty` replaces every tensor's storage.
"""

from __future__ import annotations

from typing import Any

import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.parallel import TensorParallel
from torch import Tensor
from torch.overrides import TorchFunctionMode

SMALL = 1 << 16  # elements: a tensor this small is allocated for real (at most 256 kB in fp32)

_INIT = {
    torch.nn.init.normal_,
    torch.nn.init.uniform_,
    torch.nn.init.trunc_normal_,
    torch.nn.init.kaiming_uniform_,
    torch.nn.init.kaiming_normal_,
    torch.nn.init.xavier_uniform_,
    torch.nn.init.xavier_normal_,
    torch.nn.init.zeros_,
    torch.nn.init.ones_,
    torch.nn.init.constant_,
}
_WRITES = {Tensor.normal_, Tensor.uniform_, Tensor.copy_, Tensor.fill_, Tensor.zero_}
_SIZED = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn}
_ALWAYS_SMALL = {torch.arange, torch.tensor, torch.linspace}


def _numel(args: tuple[Any, ...]) -> int:
    """The element count of a factory's size arguments (`f(2, 3)` or `f((2, 3))`); unknown -> large."""
    if args and isinstance(args[0], tuple | list | torch.Size):
        args = tuple(args[0])
    n = 1
    for d in args:
        if not isinstance(d, int):
            return SMALL + 1
        n *= d
    return n


class _Skeleton(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _INIT or func in _WRITES:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, Tensor) and target.is_meta:
                return target
        elif kwargs.get("device") is None and (
            func in _ALWAYS_SMALL or (func in _SIZED and _numel(args) <= SMALL)
        ):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def skeleton(cfg: HybridConfig, tp: TensorParallel | None = None) -> HybridLM:
    """The model of `cfg` with its large tensors on the meta device and nothing initialised (module
    docstring); `to_empty` gives every tensor real, uninitialised storage. With `tp`: that rank's shard
    (model/parallel.py)."""
    with torch.device("meta"), _Skeleton():
        return HybridLM(cfg, tp)


def to_empty(model: HybridLM, device: torch.device | str, dtype: torch.dtype) -> HybridLM:
    """`model.to(dtype).to_empty(device=device)` without torch's Python references: `nn.Module.to_empty`
    calls `empty_like` on meta tensors, whose reference implementation imports sympy (a second of
    every start); a plain `empty` of each tensor's shape is the same storage, contiguous."""

    def fresh(t: Tensor) -> Tensor:
        return torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)

    return model._apply(fresh)
