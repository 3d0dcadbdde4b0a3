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
