"""Named tensors <-> bytes, with safetensors only.

Never pickle: a session database may come from someone else, and loading it must not run code.
safetensors keeps every dtype (bf16 included) and shape, and its output is deterministic for the same
tensors, which is what lets identical states deduplicate as identical blobs.
"""

from __future__ import annotations

import json
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


# safetensors dtype names -> torch dtypes (the ones this torch build has).
_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
        "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "C64": "complex64",
    }.items()
    if hasattr(torch, attr)
}
_MAX_HEADER = 100 << 20  # as the safetensors library: a larger header is not one it wrote


def tensors_from_buffer(buf: torch.Tensor, *, what: str) -> dict[str, torch.Tensor]:
    """Tensors viewing `buf` (a uint8 safetensors image, verified, on any device) without copying it.

    Why not `safetensors.torch.load`: it wants `bytes` and copies every tensor out of them, which
    for a GB snapshot means one more host copy and no way to build the tensors on the GPU. The format
    is small (little-endian u64 header length, JSON header, raw data); the header is validated as the
    library does (known dtypes, sizes that match shapes, ranges that tile the data exactly), so a
    malformed image raises `CorruptDataError` instead of aliasing or reading out of bounds. A tensor
    whose offset is not a multiple of its element size (safetensors does not align) is copied."""

    def bad(why: str) -> CorruptDataError:
        return CorruptDataError(
            f"{what}: the stored bytes passed their sha256 check but are not valid safetensors ({why}); "
            "the snapshot was written by something else — load an earlier turn or fork from one"
        )

    if buf.dtype != torch.uint8 or buf.dim() != 1:
        raise TypeError("tensors_from_buffer wants a 1-D uint8 tensor")
    total = buf.numel()
    if total < 8:
        raise bad("shorter than its 8-byte header length")
    n = int.from_bytes(bytes(buf[:8].cpu().numpy()), "little")
    if n > min(_MAX_HEADER, total - 8):
        raise bad(f"header length {n} is beyond the {total} bytes")
    try:
        header = json.loads(bytes(buf[8 : 8 + n].cpu().numpy()))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    base, data_len = 8 + n, total - 8 - n
    spans: list[tuple[int, int, str]] = []
    specs: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = _DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has an unknown dtype or a malformed entry") from None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has a malformed shape or offset")
        numel = 1
        for d in shape:
            numel *= d
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len):
            raise bad(f"tensor {name!r} lies outside the data")
        if end - start != numel * dtype.itemsize:
            raise bad(f"tensor {name!r} has {end - start} bytes for shape {shape}")
        spans.append((start, end, name))
        specs[name] = (dtype, shape, start, end)
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            raise bad(f"tensor {name!r} overlaps another or leaves a gap")
        at = end
    if at != data_len:
        raise bad(f"the tensors cover {at} of the {data_len} data bytes")
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape, start, end) in specs.items():
        raw = buf[base + start : base + end]
        if (base + start) % dtype.itemsize:
            raw = raw.clone()  # a fresh allocation is aligned for every dtype
        out[name] = raw.view(dtype).view(shape)
    return out
