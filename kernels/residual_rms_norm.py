"""`residual_rms_norm(x, y, w_y, w_out, eps)`: x <- x + (rms_norm(y) w_y if w_y is given, else y), in
place (x's dtype, as `x + ...` rounds), and returns rms_norm(x) w_out (or None): the residual add of one
sub-layer fused with the norm in front of the next one (pre-norm) or behind this one (post-norm), one
launch for the decode engine (model/decode/engine.py) with the roundings of the model's T == 1 path.
`residual_rms_norm_ref` is the definition; Triton on CUDA (kernels/triton_residual_rms_norm.py).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton
from hybrid_agent.kernels.checks import check_residual
from hybrid_agent.kernels.rms_norm import rms_norm_ref


def residual_rms_norm_ref(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    check_residual(x, y)
    x.copy_(x + (y if w_y is None else rms_norm_ref(y, w_y, eps)))
    return None if w_out is None else rms_norm_ref(x, w_out, eps)


def residual_rms_norm(
    x: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor | None, w_out: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if use_triton(x):
        from hybrid_agent.kernels.triton_residual_rms_norm import residual_rms_norm_triton

        return residual_rms_norm_triton(x, y, w_y, w_out, eps)
    return residual_rms_norm_ref(x, y, w_y, w_out, eps)
