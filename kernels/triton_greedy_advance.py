"""Triton version of kernels/greedy_advance.py (same contract; see that module's doc)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.errors import KernelInputError


@triton.jit
def _argmax_blocks_kernel(x_ptr, val_ptr, idx_ptr, V, s_row, P, BLOCK: tl.constexpr):
    # grid (B, P): the maximum of one block of a row and the first index where it occurs
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    offs = p * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + b * s_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN counts as the maximum, as in torch.argmax
    v, i = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(val_ptr + b * P + p, v)
    tl.store(idx_ptr + b * P + p, p * BLOCK + i)


@triton.jit
def _greedy_finish_kernel(val_ptr, idx_ptr, tok_ptr, pos_ptr, ids_ptr, B, P, V, s_ids, BP: tl.constexpr):
    # one program: the row maxima from the block maxima (the smallest index among equal maxima: blocks
    # hold increasing indices), then tok, ids[:, pos + 1] and pos + 1 (after every row has read pos)
    offs = tl.arange(0, BP)
    m = offs < P
    nxt = tl.load(pos_ptr) + 1
    for b in range(0, B):
        v = tl.load(val_ptr + b * P + offs, mask=m, other=-float("inf"))
        i = tl.load(idx_ptr + b * P + offs, mask=m, other=2147483647)
        best = tl.max(v, axis=0)
        arg = tl.min(tl.where(m & (v == best), i, 2147483647), axis=0)
        arg = tl.minimum(tl.maximum(arg, 0), V - 1).to(tl.int64)  # never a token id out of range
        tl.store(tok_ptr + b, arg)
        tl.store(ids_ptr + b * s_ids + nxt, arg)
    tl.store(pos_ptr, nxt)


def greedy_advance_triton(
    logits: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor
) -> None:
    if logits.stride(1) != 1 or not tok.is_contiguous() or ids.stride(1) != 1:
        raise KernelInputError("greedy_advance_triton needs contiguous logits rows, tok and ids rows")
    B, V = logits.shape
    BLOCK = 4096
    P = triton.cdiv(V, BLOCK)
    val = torch.empty(B, P, device=logits.device, dtype=torch.float32)
    idx = torch.empty(B, P, device=logits.device, dtype=torch.int32)
    _argmax_blocks_kernel[(B, P)](logits, val, idx, V, logits.stride(0), P, BLOCK=BLOCK, num_warps=8)
    _greedy_finish_kernel[(1,)](val, idx, tok, pos, ids, B, P, V, ids.stride(0),
                                BP=triton.next_power_of_2(P), num_warps=1)  # fmt: skip
