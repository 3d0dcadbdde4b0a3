"""Named tensors <-> bytes, in the safetensors format only.

Never pickle: a session database may come from someone else, and loading it must not run code.
safetensors keeps every dtype (bf16 included) and shape, and our writer's output is deterministic for
the same tensors, which is what lets identical states deduplicate as identical blobs. Both directions
are written here (a few dozen lines: an 8-byte header length, a JSON header, raw data) rather than
through the safetensors library, which copies every byte several times on one core; images written by
the library (older snapshots) load the same way, and the library loads ours.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from hybrid_agent.memory.errors import CorruptDataError


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> memoryview:
    """Serialise on the CPU into one safetensors image (any safetensors reader loads it).

    Why not `safetensors.torch.save`: it copies every tensor two or three times on one core (about
    0.7 GB/s on the H100's host: 0.8 s of a 0.56 GB snapshot's 2 s save). Here the header is written
    first and each tensor is copied once into one preallocated buffer, large tensors in pieces on
    the thread pool (numpy copies release the GIL). Deterministic for the same tensors (identical
    states still deduplicate); tensors are ordered by element size, largest first, then name, and the
    header is padded to 8 bytes, so every tensor is aligned and `tensors_from_buffer` never copies."""
    flat: list[tuple[str, torch.Tensor]] = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, expected torch.Tensor")
        if name == "__metadata__":  # the safetensors format's own key: a reader skips it
            raise ValueError("a tensor cannot be named '__metadata__' in a safetensors image")
        if tensor.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        flat.append((name, tensor.detach().to("cpu").contiguous()))
    flat.sort(key=lambda item: (-item[1].element_size(), item[0]))
    header: dict[str, object] = {}
    end = 0
    for name, t in flat:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [end, end + n]}
        end += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned, as the safetensors library writes it
    base = 8 + len(raw)
    out = np.empty(base + end, dtype=np.uint8)
    out[:8] = np.frombuffer(len(raw).to_bytes(8, "little"), dtype=np.uint8)
    out[8:base] = np.frombuffer(raw, dtype=np.uint8)
    jobs = []
    for name, t in flat:
        start, stop = header[name]["data_offsets"]  # type: ignore[index]
        src = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else None
        for a in range(0, stop - start, _COPY_PIECE):
            jobs.append((out[base + start + a : base + min(stop, start + a + _COPY_PIECE)], src, a))
    if sum(len(j[0]) for j in jobs) >= 2 * _COPY_PIECE:
        from hybrid_agent.memory.blobs import _pool

        list(_pool().map(_copy_piece, jobs))
    else:
        for job in jobs:
            _copy_piece(job)
    return memoryview(out)


_COPY_PIECE = 8 << 20  # bytes per copy job: big enough to amortise the hand-off


def _copy_piece(job: tuple[np.ndarray, np.ndarray | None, int]) -> None:
    dst, src, at = job
    if src is not None:
        dst[:] = src[at : at + len(dst)]


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
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 << 20  # as the safetensors library: a larger header is not one it wrote
_MAX_DIM = 1 << 63  # torch sizes are int64


def tensors_from_buffer(buf: torch.Tensor, *, what: str) -> dict[str, torch.Tensor]:
    """Tensors viewing `buf` (a uint8 safetensors image, verified, on any device) without copying it.

    Why not `safetensors.torch.load`: it wants `bytes` and copies every tensor out of them, which
    for a GB snapshot means one more host copy and no way to build the tensors on the GPU. The format
    is small (little-endian u64 header length, JSON header, raw data); the header is validated as the
    library does (known dtypes, sizes that match shapes, ranges that tile the data exactly), so a
    malformed image raises `CorruptDataError` instead of aliasing or reading out of bounds. A tensor
    whose offset is not a multiple of its element size (safetensors does not align) is copied."""

    def bad(why: str) -> CorruptDataError:
        why = why if len(why) <= 300 else why[:300] + "..."  # names and shapes come from the bytes
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
    except (ValueError, RecursionError) as exc:  # also: a number too long to convert, deep nesting
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
        if not isinstance(shape, list) or not all(_whole(d) and 0 <= d < _MAX_DIM for d in shape):
            raise bad(f"tensor {name!r} has a malformed shape or offset")
        numel = 0 if 0 in shape else 1
        for d in shape:
            if numel > data_len:  # already more elements than bytes: stop before a huge product
                break
            numel *= d
        if not (_whole(start) and _whole(end) and 0 <= start <= end <= data_len):
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
        try:
            out[name] = raw.view(dtype).view(shape)
        except RuntimeError:  # an empty tensor whose dims multiply past what torch can index
            raise bad(f"tensor {name!r} has a shape torch cannot hold") from None
    return out


def _whole(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true/false are not sizes
