"""Triton helpers shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """tl.dot; with IEEE, exact fp32 products (for fp32 inputs, and for the CPU interpreter, whose
    16-bit dot is wrong), else the inputs' own tensor-core precision."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def pow2_scale(t):
    """A power of two that brings max|t| of a 2-D tile to [2^14, 2^15): scaled by it, the tile fits
    fp16's range (max 65504) with its largest entries at full precision, and the scaling is exact to
    undo. An all-zero tile gets 2^114 (finite in fp32; its products stay 0)."""
    amax = tl.max(tl.max(tl.abs(t), axis=1), axis=0)
    return tl.exp2(14.0 - tl.floor(tl.log2(tl.maximum(amax, 1e-30))))
