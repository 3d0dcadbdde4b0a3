"""`moe_route`: a mixture-of-experts router's logits (N, E) -> the chosen experts' weights (N, k) and ids
(N, k), for the selection without groups (model/moe.py `MoE.route` with n_groups == 1):

    scores = softmax(logits) or sigmoid(logits)           in fp32
    ids    = top_k(scores [+ bias])                        bias (E,) only chooses
    w      = scores[ids];  w /= sum(w) if norm;  w *= scaling;  w -> out_dtype

Ids come in descending order of the choice (as torch.topk gives them), int64. `moe_route_ref` is the
definition (the model's own arithmetic); on CUDA one Triton launch per call, one program per token
(kernels/triton_moe_route.py), where the torch path takes ~7 (cast, scores, top-k, sum, divide, scale,
cast). The decode engine calls it in its fused MoE step (model/decode/moe_step.py); nothing is read back
to the host. Dispatch as every op (kernels/_dispatch.py).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.errors import KernelInputError

__all__ = ["moe_route", "moe_route_ref"]


def _check(logits: torch.Tensor, top_k: int, scoring: str, bias: torch.Tensor | None) -> None:
    if logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise KernelInputError(
            f"moe_route: logits must be floating (N, E), got {tuple(logits.shape)} {logits.dtype}"
        )
    E = logits.shape[1]
    if not 1 <= top_k <= E:
        raise KernelInputError(f"moe_route: top_k must be in [1, {E}], got {top_k}")
    if scoring not in ("softmax", "sigmoid"):
        raise KernelInputError(f"moe_route: scoring must be softmax or sigmoid, got {scoring!r}")
    if bias is not None and bias.shape != (E,):
        raise KernelInputError(f"moe_route: bias must be ({E},), got {tuple(bias.shape)}")


def moe_route_ref(
    logits: torch.Tensor, top_k: int, *, scoring: str = "softmax", bias: torch.Tensor | None = None,
    norm: bool = False, scaling: float = 1.0, out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check(logits, top_k, scoring, bias)
    logits = logits.float()
    scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    if bias is None:
        weights, ids = scores.topk(top_k, dim=-1)
    else:
        ids = (scores + bias.float()).topk(top_k, dim=-1).indices
        weights = scores.gather(-1, ids)
    if norm:
        weights = weights / weights.sum(-1, keepdim=True)
    return (weights * scaling).to(out_dtype), ids


def moe_route(
    logits: torch.Tensor, top_k: int, *, scoring: str = "softmax", bias: torch.Tensor | None = None,
    norm: bool = False, scaling: float = 1.0, out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The top-k weights (N, k) in `out_dtype` and ids (N, k) int64 (see the module doc)."""
    if use_triton(logits):
        from hybrid_agent.kernels.triton_moe_route import moe_route_triton

        _check(logits, top_k, scoring, bias)
        return moe_route_triton(logits, top_k, scoring, bias, norm, scaling, out_dtype)
    return moe_route_ref(
        logits, top_k, scoring=scoring, bias=bias, norm=norm, scaling=scaling, out_dtype=out_dtype
    )
