"""Exception types of kernels/: raised when a caller hands an op tensors it cannot take."""

from __future__ import annotations


class KernelInputError(ValueError):
    """An op was given tensors of the wrong shape, dtype or device; the message says which and why."""
