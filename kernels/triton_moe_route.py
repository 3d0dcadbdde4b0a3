"""Triton version of kernels/moe_route.py (same contract; see that module's doc).

`_moe_route_kernel`, grid (N,): the program of token n loads its E logits (one block of next_pow2(E),
the rest -inf), forms the fp32 scores (softmax over the row, or sigmoid) and the choice (scores + bias),
then takes the k best one at a time (argmax, the lowest index on a tie; the winner set to -inf), keeps
each one's score, normalises and scales the k weights and writes them and the ids. E up to a few
hundred fits one program's registers; N is a decode step's token count.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _moe_route_kernel(
    logits_ptr, bias_ptr, w_ptr, ids_ptr, E, stride_l, scaling,
    TOP_K: tl.constexpr, SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    live = offs < E
    logit = tl.load(logits_ptr + n * stride_l + offs, mask=live, other=float("-inf")).to(tl.float32)
    if SOFTMAX:
        p = tl.exp(logit - tl.max(logit, axis=0))
        p = tl.where(live, p, 0.0)
        scores = p / tl.sum(p, axis=0)
    else:
        scores = tl.sigmoid(logit)
    choice = scores
    if HAS_BIAS:
        choice = scores + tl.load(bias_ptr + offs, mask=live, other=0.0).to(tl.float32)
    choice = tl.where(live, choice, float("-inf"))
    offs_k = tl.arange(0, BLOCK_K)
    w = tl.zeros((BLOCK_K,), tl.float32)
    ids = tl.zeros((BLOCK_K,), tl.int64)
    for j in tl.static_range(TOP_K):
        best = tl.argmax(choice, axis=0)
        score = tl.sum(tl.where(offs == best, scores, 0.0), axis=0)
        w = tl.where(offs_k == j, score, w)
        ids = tl.where(offs_k == j, best.to(tl.int64), ids)
        choice = tl.where(offs == best, float("-inf"), choice)
    if NORM:
        w = w / tl.sum(w, axis=0)  # the entries past k are 0
    w = w * scaling
    keep = offs_k < TOP_K
    tl.store(w_ptr + n * TOP_K + offs_k, w.to(w_ptr.dtype.element_ty), mask=keep)
    tl.store(ids_ptr + n * TOP_K + offs_k, ids, mask=keep)


def moe_route_triton(
    logits: torch.Tensor, top_k: int, scoring: str, bias: torch.Tensor | None, norm: bool, scaling: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    N, E = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    w = torch.empty(N, top_k, dtype=out_dtype, device=logits.device)
    ids = torch.empty(N, top_k, dtype=torch.int64, device=logits.device)
    if N == 0:
        return w, ids
    bias_arg = logits if bias is None else bias.contiguous()
    block_e = triton.next_power_of_2(E)
    _moe_route_kernel[(N,)](
        logits, bias_arg, w, ids, E, logits.stride(0), float(scaling), TOP_K=top_k,
        SOFTMAX=scoring == "softmax", HAS_BIAS=bias is not None, NORM=norm, BLOCK_E=block_e,
        BLOCK_K=triton.next_power_of_2(top_k), num_warps=4 if block_e <= 256 else 8,
    )  # fmt: skip
    return w, ids
