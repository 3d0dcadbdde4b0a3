"""Triton version of kernels/gemv.py (same contract; see that module's doc).

One program reads UNROLL (BLOCK_N, BLOCK_K) tiles of W per loop trip (each thread 16-byte runs along
K, as rows are contiguous; evict-first, as each weight byte is read once a step), multiplies them by
the x columns in fp32 and keeps the products in a (BLOCK_N, BLOCK_K) accumulator, reduced over K once
at the end (a cross-thread sum per tile would cost more instructions than the loads). Rows past N are
clamped to N - 1, so W is loaded without masks (a mask that varies along K stops 16-byte loads); only
their outputs are dropped. With split_k > 1
the grid has a second axis over K shares: each writes fp32 partial sums, and `_splitk_reduce` adds them
in a fixed order (deterministic, unlike atomics), adds the bias and rounds once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hybrid_agent.kernels.checks import GemvConfig


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, N, K, K_SPLIT,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr,
    HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.minimum(offs_n, N - 1)  # clamped: every W load is in bounds
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * K  # (BLOCK_N, 1)
    k_lo = pid_k * K_SPLIT  # K_SPLIT is a multiple of BLOCK_K
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    k_end = k_lo + ((k_hi - k_lo) // BLOCK_K) * BLOCK_K  # full tiles below k_end, a masked tail after
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    # UNROLL (1, 2 or 4) tiles per trip, all loads in flight before the first product (Triton does
    # not software-pipeline loads that feed no tl.dot)
    k_mid = k_lo + ((k_hi - k_lo) // (UNROLL * BLOCK_K)) * (UNROLL * BLOCK_K)
    for k in range(k_lo, k_mid, UNROLL * BLOCK_K):
        k = tl.multiple_of(k, BLOCK_K)
        # written out (not a static loop): ptxas then issues every load before the first product
        w0 = tl.load(w_rows + (k + offs_k)[None, :], eviction_policy="evict_first")
        if UNROLL >= 2:
            w1 = tl.load(w_rows + (k + BLOCK_K + offs_k)[None, :], eviction_policy="evict_first")
        if UNROLL >= 4:
            w2 = tl.load(w_rows + (k + 2 * BLOCK_K + offs_k)[None, :], eviction_policy="evict_first")
            w3 = tl.load(w_rows + (k + 3 * BLOCK_K + offs_k)[None, :], eviction_policy="evict_first")
        acc += w0.to(tl.float32) * tl.load(x_ptr + k + offs_k).to(tl.float32)[None, :]
        if UNROLL >= 2:
            acc += w1.to(tl.float32) * tl.load(x_ptr + k + BLOCK_K + offs_k).to(tl.float32)[None, :]
        if UNROLL >= 4:
            acc += w2.to(tl.float32) * tl.load(x_ptr + k + 2 * BLOCK_K + offs_k).to(tl.float32)[None, :]
            acc += w3.to(tl.float32) * tl.load(x_ptr + k + 3 * BLOCK_K + offs_k).to(tl.float32)[None, :]
    for k in range(k_mid, k_end, BLOCK_K):
        k = tl.multiple_of(k, BLOCK_K)
        w = tl.load(w_rows + (k + offs_k)[None, :], eviction_policy="evict_first")
        xv = tl.load(x_ptr + k + offs_k)
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
    if k_end < k_hi:
        kk = k_end + offs_k
        mk = kk < k_hi
        w = tl.load(w_rows + kk[None, :], mask=mk[None, :], other=0.0, eviction_policy="evict_first")
        xv = tl.load(x_ptr + kk, mask=mk, other=0.0)
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)  # (BLOCK_N,)
    if PARTIAL:
        tl.store(out_ptr + pid_k * N + offs_n, y, mask=mask_n)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + rows).to(tl.float32)
        tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _splitk_reduce(part_ptr, b_ptr, out_ptr, MN, N, SPLIT, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in range(SPLIT):  # in order: the same sum on every run
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemv_triton(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cfg: GemvConfig) -> torch.Tensor:
    """One row: x (..., K) with a single row in all, w (N, K) contiguous (kernels/gemv.py checks both)."""
    N, K = w.shape
    x1 = x.reshape(K)
    if x1.stride(0) != 1:
        x1 = x1.contiguous()
    out = torch.empty(N, dtype=x.dtype, device=x.device)
    block_k = cfg.block_k
    k_split = triton.cdiv(triton.cdiv(K, max(1, cfg.split_k)), block_k) * block_k
    split = triton.cdiv(K, k_split)
    grid = (triton.cdiv(N, cfg.block_n), split)
    b_arg = b if b is not None else w  # never read without HAS_BIAS
    common = dict(BLOCK_N=cfg.block_n, BLOCK_K=block_k, UNROLL=cfg.unroll, HAS_BIAS=b is not None)
    if split == 1:
        _gemv_kernel[grid](x1, w, b_arg, out, N, K, k_split, PARTIAL=False, num_warps=cfg.num_warps, **common)
    else:
        part = torch.empty(split, N, dtype=torch.float32, device=x.device)
        _gemv_kernel[grid](x1, w, b_arg, part, N, K, k_split, PARTIAL=True, num_warps=cfg.num_warps, **common)
        block = 1024
        _splitk_reduce[(triton.cdiv(N, block),)](
            part, b_arg, out, N, N, split, HAS_BIAS=b is not None, BLOCK=block, num_warps=4
        )
    return out.view(*x.shape[:-1], N)
