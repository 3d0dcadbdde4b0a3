"""Reading the tensors of a safetensors checkpoint (one file or shards + index) one at a time.

Design choices:
- We parse the safetensors header ourselves (8-byte little-endian length, a JSON table of
  `name -> dtype, shape, data_offsets`, then the raw bytes) and read each tensor's byte range with
  `readinto`, straight into its destination when the dtype matches. `safe_open` memory-maps the whole
  shard: every page it touches stays in our resident memory until the shard is closed, so a one-shard
  model would peak near twice its size. Plain reads keep the peak at the model plus one tensor.
- Reads are positional (`os.preadv`, no shared file offset), so a large tensor is read as `READ_CHUNK`
  pieces on several threads at once: one thread copies from the page cache at a few GB/s, and the
  GIL is released while it does.
- A CUDA target (`upload_into`) goes through a ring of pinned buffers of `READ_CHUNK` bytes. The call
  only queues its pieces and returns: each piece is one job on the reading threads, which takes a free
  buffer (waiting for the copy that last used it), reads into it and starts its asynchronous copy to
  the GPU. So the next tensors' pieces are read while the earlier ones are still being read and
  copied: every thread reads all the time, whatever the tensors' sizes (a tensor of one piece no
  longer reads on one thread while the others wait), and host memory stays bounded by the ring.
  `sync` (or `close`) waits for every piece and raises the first error one of them met.
- The header is checked before anything is read: its length is capped, every entry needs a known
  dtype, a shape, and `data_offsets` that match the shape and lie inside the file. A file that fails
  is named in a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hybrid_agent.model.errors import CheckpointError
from torch import Tensor

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
READ_CHUNK = 16 << 20  # bytes one thread reads at a time (and the size of `upload_into`'s buffers)
RING_SLOTS = 16  # the pinned buffers of `upload_into`: two per reading thread at most (8 threads)

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


def _entry(path: Path, name: str, info: Any, base: int, size: int) -> TensorEntry:
    """One header entry, checked: a known dtype, a shape of counts, offsets that fit it and the file."""
    bad = f"{path} has a corrupt safetensors header (tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{bad} is not an object); re-download it")
    dtype = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise CheckpointError(f"tensor {name} in {path} has unsupported dtype {info.get('dtype')}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{bad} has no valid shape); re-download it")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"{bad} has no valid data_offsets); re-download it")
    begin, end = offsets
    nbytes = _numel(tuple(shape)) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise CheckpointError(f"{bad}: data_offsets {offsets} do not fit shape {shape}); re-download it")
    if base + end > size:
        raise CheckpointError(f"{path} ends inside tensor {name}: it is truncated, re-download it")
    return TensorEntry(name, path, dtype, tuple(shape), base + begin, nbytes)


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
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not an object); re-download it")
    header["__data_start__"] = 8 + length
    return header


class ShardSet:
    """Every tensor of a checkpoint directory, by name, without reading any tensor data."""

    def __init__(self, root: Path, *, threads: int | None = None) -> None:
        """`threads`: how many read at once (default: the CPU count, at most 8; 1 reads inline)."""
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
            size = path.stat().st_size
            for tname, info in header.items():
                self.entries[tname] = _entry(path, tname, info, base, size)
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._threads = max(1, min(8, os.cpu_count() or 1) if threads is None else threads)
        self._pool: ThreadPoolExecutor | None = None
        self._ring: _Ring | None = None
        self._uploads: list[Future[None]] = []

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            return self._fds[path]

    def _pread(self, e: TensorEntry, buf: memoryview, offset: int) -> None:
        """Fill `buf` with the entry's bytes from `offset` on (relative to the tensor)."""
        fd, done = self._fd(e.file), 0
        while done < buf.nbytes:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [buf[done:]], e.start + offset + done)
            else:  # no positional reads here (Windows): one reader at a time
                with self._lock:
                    os.lseek(fd, e.start + offset + done, os.SEEK_SET)
                    n = os.readv(fd, [buf[done:]])
            if not n:
                raise CheckpointError(f"{e.file} ends inside tensor {e.name}: truncated, re-download it")
            done += n

    def _read_bytes(self, e: TensorEntry, buf: memoryview, offset: int = 0) -> None:
        """`_pread` of `buf.nbytes` bytes, split into `READ_CHUNK` pieces read on the pool's threads."""
        pieces = [(i, min(i + READ_CHUNK, buf.nbytes)) for i in range(0, buf.nbytes, READ_CHUNK)]
        if len(pieces) <= 1 or self._threads == 1:
            self._pread(e, buf, offset)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="shard-read")
        futures = [self._pool.submit(self._pread, e, buf[a:b], offset + a) for a, b in pieces]
        for f in futures:
            f.result()

    def read_into(self, name: str, out: Tensor) -> Tensor:
        """Fill the contiguous CPU tensor `out` (the entry's dtype and size) with the tensor's bytes."""
        e = self.entries[name]
        if out.dtype != e.dtype or out.numel() != _numel(e.shape) or not out.is_contiguous():
            raise AssertionError(f"read_into({name}): {out.dtype} {tuple(out.shape)} does not fit the tensor")
        if e.nbytes:
            self._read_bytes(e, memoryview(out.view(-1).view(torch.uint8).numpy()))
        return out.view(e.shape)

    def upload_into(self, name: str, out: Tensor) -> Tensor:
        """Fill the contiguous CUDA tensor `out` (the entry's dtype and size) through the pinned ring:
        the reads and copies run on the reading threads after this returns; `sync` (or `close`) waits
        for them and raises the first error one met."""
        e = self.entries[name]
        if out.dtype != e.dtype or out.numel() != _numel(e.shape) or not out.is_contiguous():
            raise AssertionError(f"upload_into({name}): {out.dtype} {tuple(out.shape)} does not fit")
        if self._ring is None:
            self._ring = _Ring(min(RING_SLOTS, 2 * self._threads))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="shard-read")
        dst = out.view(-1).view(torch.uint8)
        for a in range(0, e.nbytes, READ_CHUNK):
            n = min(READ_CHUNK, e.nbytes - a)
            self._uploads.append(self._pool.submit(self._upload_piece, e, dst, a, n))
        return out.view(e.shape)

    def _upload_piece(self, e: TensorEntry, dst: Tensor, offset: int, n: int) -> None:
        """One job of `upload_into`: bytes [offset, offset + n) of the entry into a free pinned buffer,
        then its asynchronous copy into `dst`; the buffer goes back to the ring with the copy's event."""
        assert self._ring is not None
        i, slot = self._ring.take()
        event = None
        try:
            self._pread(e, memoryview(slot[:n].numpy()), offset)
            event = _copy_async(dst[offset : offset + n], slot[:n])
        finally:
            self._ring.give(i, event)

    def read(self, name: str) -> Tensor:
        e = self.entries[name]
        return self.read_into(name, torch.empty(e.shape, dtype=e.dtype))

    def sync(self) -> None:
        """Wait for the uploads `upload_into` started; the first error one met is raised here."""
        uploads, self._uploads = self._uploads, []
        error: BaseException | None = None
        for f in uploads:  # every one waited for, so none still writes into a buffer afterwards
            try:
                f.result()
            except BaseException as exc:
                error = error or exc
        if self._ring is not None:
            self._ring.wait_all()
        if error is not None:
            raise error

    def close(self) -> None:
        """Release the files, threads and buffers. Uploads not begun are dropped and those running waited
        for, their errors not raised: a caller that needs the uploads calls `sync` first (a load that
        failed or was cancelled elsewhere only needs them stopped)."""
        for f in self._uploads:
            f.cancel()
        with contextlib.suppress(Exception):  # see the docstring
            self.sync()
        self._ring = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _pinned(nbytes: int) -> Tensor:
    """A page-locked host buffer: the GPU copies from it without an extra staging copy, asynchronously."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)  # (allocated pinned: no copy)


def _copy_async(dst: Tensor, src: Tensor) -> Any:
    """Queue the copy of the pinned `src` into the GPU tensor `dst` on `dst`'s device's current stream;
    the event whose `synchronize()` returns once it is done (and `src` may be written again)."""
    dst.copy_(src, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(dst.device))
    return event


class _Ring:
    """`size` pinned buffers of `READ_CHUNK` bytes, taken by the reading threads in turn; one comes back
    with the event of the copy that reads it, and is reused once that copy has finished. A buffer is
    allocated when it is first taken (on the thread that takes it, so the ring's pinning is parallel)."""

    def __init__(self, size: int) -> None:
        self.slots: list[Tensor | None] = [None] * size
        self.events: list[Any] = [None] * size
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(size):
            self.free.put(i)

    def take(self) -> tuple[int, Tensor]:
        i = self.free.get()
        if self.events[i] is not None:
            self.events[i].synchronize()
            self.events[i] = None
        slot = self.slots[i]
        if slot is None:
            try:
                slot = self.slots[i] = _pinned(READ_CHUNK)
            except BaseException:
                self.free.put(i)
                raise
        return i, slot

    def give(self, i: int, event: Any) -> None:
        self.events[i] = event
        self.free.put(i)

    def wait_all(self) -> None:
        for event in list(self.events):
            if event is not None:
                event.synchronize()
