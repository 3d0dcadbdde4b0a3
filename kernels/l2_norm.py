"""`l2_norm(x, eps=1e-6)`: x / sqrt(sum(x^2) + eps) over the last axis (fla's and transformers' form, eps
inside the root), fp32 arithmetic, x's dtype out: the q and k normalisation of Gated DeltaNet and Kimi
delta attention (model/gated_deltanet.py `l2_normalize`).

`l2_norm_ref` is the definition, in torch: the product reads x itself (a 16-bit value times an fp32
factor is computed in fp32) and rounds once into x's dtype. On CUDA that is about six launches (the
fp32 copy, the squares, their sum, the eps, the root, the product), each a pass over the (..., d) rows;
the Triton kernel (kernels/triton_l2_norm.py) reads each row once and writes it once, reading rows
where they lie (q or k as a column block of the conv's q|k|v output, cut in heads). Its sum of squares
adds in another order and its root and reciprocal are each correctly rounded, so its factor can differ
from torch's by an ulp and an output by one rounding step of x's dtype (tests/model/test_prefill_stacked.py
compares both with float64).
"""

from __future__ import annotations

import torch
from hybrid_agent.kernels._dispatch import use_triton


def l2_norm_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)  # (..., 1) fp32
    if x.dtype not in (torch.bfloat16, torch.float16) or (torch.is_grad_enabled() and x.requires_grad):
        return (xf * r).to(x.dtype)  # (`out=` records no autograd graph)
    return torch.mul(x, r, out=x.new_empty(x.shape))


def l2_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., d) in x's dtype, packed. See the module doc. The Triton kernel has no backward: a tensor that
    asks for a gradient takes the reference."""
    grad = torch.is_grad_enabled() and x.requires_grad
    if not grad and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and use_triton(x):
        from hybrid_agent.kernels.triton_l2_norm import l2_norm_triton

        return l2_norm_triton(x, eps)
    return l2_norm_ref(x, eps)
