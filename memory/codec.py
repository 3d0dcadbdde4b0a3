"""Named tensors <-> bytes, with safetensors only.

Never pickle: a session database may come from someone else, and loading it must not run code.
safetensors keeps every dtype (bf16 included) and shape, and its output is deterministic for the same
tensors, which is what lets identical states deduplicate as identical blobs.
"""

from __future__ import annotations

from collections.abc import Mapping

import safetensors.torch
import torch

from memory.errors import CorruptDataError


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise on the CPU. Views that share storage are cloned (safetensors refuses shared storage)."""
    flat: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, expected torch.Tensor")
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            t = t.clone()
        elif ptr:
            seen.add(ptr)
        flat[name] = t
    return safetensors.torch.save(flat)


def bytes_to_tensors(data: bytes, *, what: str) -> dict[str, torch.Tensor]:
    """Fresh CPU tensors from bytes whose hash was already verified. `what` names the data in errors."""
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error type for a malformed header
        raise CorruptDataError(
            f"{what}: the stored bytes passed their sha256 check but are not valid safetensors ({exc}); "
            "the snapshot was written by something else — load an earlier turn or fork from one"
        ) from exc
