"""Reading the tensors of a safetensors checkpoint (one file or shards + index) one at a time.

Design choices:
- We parse the safetensors header ourselves (8-byte little-endian length, a JSON table of
  `name -> dtype, shape, data_offsets`, then the raw bytes) and read each tensor's byte range with
  `readinto`, straight into its destination when the dtype matches. `safe_open` memory-maps the whole
  shard: every page it touches stays in our resident memory until the shard is closed, so a one-shard
  model would peak near twice its size. Plain reads keep the peak at the model plus one tensor.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hybrid_agent.model.errors import CheckpointError
from torch import Tensor

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in `file`
    nbytes: int


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short); re-download it")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise CheckpointError(f"{path} has an implausible header ({length} bytes); re-download it")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({e}); re-download it") from e
    header["__data_start__"] = 8 + length
    return header


class ShardSet:
    """Every tensor of a checkpoint directory, by name, without reading any tensor data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if (root / INDEX_FILE).is_file():
            index = json.loads((root / INDEX_FILE).read_text())
            files = sorted(set(index.get("weight_map", {}).values()))
        elif (root / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            files = sorted(p.name for p in root.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"no safetensors weights in {root} (looked for {INDEX_FILE}, {SINGLE_FILE}, *.safetensors); "
                "pickled .bin checkpoints are not loaded: convert them with transformers' save_pretrained"
            )
        self.entries: dict[str, TensorEntry] = {}
        for name in files:
            path = root / name
            if not path.is_file():
                raise CheckpointError(f"{INDEX_FILE} names the shard {name}, which is missing in {root}")
            header = _read_header(path)
            base = header.pop("__data_start__")
            header.pop("__metadata__", None)
            for tname, info in header.items():
                dtype = DTYPES.get(info["dtype"])
                if dtype is None:
                    raise CheckpointError(f"tensor {tname} in {path} has unsupported dtype {info['dtype']}")
                begin, end = info["data_offsets"]
                shape = tuple(info["shape"])
                self.entries[tname] = TensorEntry(tname, path, dtype, shape, base + begin, end - begin)
        self._files: dict[Path, BinaryIO] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _file(self, path: Path) -> BinaryIO:
        if path not in self._files:
            self._files[path] = path.open("rb", buffering=0)
        return self._files[path]

    def read_into(self, name: str, out: Tensor) -> Tensor:
        """Fill the contiguous CPU tensor `out` (the entry's dtype and size) with the tensor's bytes."""
        e = self.entries[name]
        if out.dtype != e.dtype or out.numel() != _numel(e.shape) or not out.is_contiguous():
            raise AssertionError(f"read_into({name}): {out.dtype} {tuple(out.shape)} does not fit the tensor")
        buf = memoryview(out.view(-1).view(torch.uint8).numpy()) if e.nbytes else memoryview(b"")
        f = self._file(e.file)
        f.seek(e.start)
        done = 0
        while done < e.nbytes:
            n = f.readinto(buf[done:])
            if not n:
                raise CheckpointError(f"{e.file} ends inside tensor {name}: it is truncated, re-download it")
            done += n
        return out.view(e.shape)

    def read(self, name: str) -> Tensor:
        e = self.entries[name]
        return self.read_into(name, torch.empty(e.shape, dtype=e.dtype))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
