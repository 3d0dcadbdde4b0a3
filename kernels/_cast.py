"""dtype helpers for the torch references: the casts they need, and none they don't.

`t.to(torch.float32)` on an fp32 tensor is a no-op that still costs a dispatch; the decode step calls
these ops ~20 times a token on the CPU, so the references check the dtype instead.
"""

from __future__ import annotations

import torch


def as_f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)
