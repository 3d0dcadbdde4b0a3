"""Our safetensors reader (model/checkpoints/shards.py) against safetensors' own loader: every dtype,
empty and multi-piece tensors read on several threads, the pinned upload to a GPU; and the one-line
error for each way a header can be wrong."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import pytest
import torch
from hybrid_agent.model import CheckpointError
from hybrid_agent.model.checkpoints import shards as shards_mod
from hybrid_agent.model.checkpoints.shards import ShardSet
from safetensors.torch import load_file, save_file


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "big.bf16": torch.randn(300, 257, generator=g).to(torch.bfloat16),
        "f32": torch.randn(1000, generator=g),
        "f16": torch.randn(7, 3, generator=g).half(),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "i64": torch.randint(-(2**40), 2**40, (9,), generator=g),
        "i8": torch.randint(-128, 127, (33,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (4, 4), generator=g, dtype=torch.uint8),
        "bool": torch.rand(10, generator=g) > 0.5,
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
    }


@pytest.mark.parametrize("threads", [1, 4])
def test_reads_equal_safetensors_load_file(tmp_path: Path, monkeypatch, threads: int) -> None:
    monkeypatch.setattr(shards_mod, "READ_CHUNK", 4096)  # "big" is read as 38 pieces
    save_file(tensors(), str(tmp_path / "model.safetensors"))
    want = load_file(str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path, threads=threads)
    try:
        assert set(s.entries) == set(want)
        for name, t in want.items():
            got = s.read(name)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
    finally:
        s.close()


@pytest.mark.gpu
def test_upload_into_a_gpu_equals_the_file(tmp_path: Path, monkeypatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(shards_mod, "READ_CHUNK", 2048)  # many pieces per tensor, the ring wraps
    save_file(tensors(), str(tmp_path / "model.safetensors"))
    want = load_file(str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path)
    try:
        out = {n: torch.empty(t.shape, dtype=t.dtype, device="cuda") for n, t in want.items()}
        for n in want:
            s.upload_into(n, out[n])
        s.sync()
        assert all(torch.equal(out[n].cpu(), t) for n, t in want.items())
    finally:
        s.close()


def header_file(folder: Path, header: object, data: bytes = b"\0" * 64, length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    n = len(raw) if length is None else length
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", n) + raw + data)


@pytest.mark.parametrize(
    ("header", "length", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 10**12, "implausible header"),
        ("not json {", None, "corrupt safetensors header"),
        ([1, 2], None, "not an object"),
        ({"a": 5}, None, "'a' is not an object"),
        ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, None, "unsupported dtype Q99"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, None, "no valid shape"),
        ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, None, "no valid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, None, "no valid data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, None, "do not fit shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, None, "do not fit shape"),
        ({"a": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}}, None, "truncated"),
    ],
)
def test_bad_headers_are_one_line_errors(tmp_path: Path, header: object, length, message: str) -> None:
    if header == "not json {":
        raw = b"not json {"
        (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    else:
        header_file(tmp_path, header, length=length)
    with pytest.raises(CheckpointError, match=message) as info:
        ShardSet(tmp_path)
    assert "\n" not in str(info.value) and "model.safetensors" in str(info.value)


def test_a_file_cut_short_after_the_header_is_a_clear_error(tmp_path: Path) -> None:
    save_file({"a": torch.ones(1000)}, str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path)  # the sizes were right when the header was read ...
    with (tmp_path / "model.safetensors").open("r+b") as f:
        f.truncate(2000)  # ... and the file shrank before the data was
    try:
        with pytest.raises(CheckpointError, match="ends inside tensor a"):
            s.read("a")
    finally:
        s.close()


class LateCopy:
    """A copy that happens only when it is waited for: what an asynchronous GPU copy may do. A ring that
    reused a buffer before waiting for its copy would copy the next piece's bytes instead."""

    def __init__(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.dst, self.src, self.done = dst, src, False

    def synchronize(self) -> None:
        if not self.done:
            self.dst.copy_(self.src)
            self.done = True


@pytest.fixture
def late_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload ring on the CPU: plain buffers for pinned ones, `LateCopy` for the device copy, and
    512-byte pieces (many a tensor)."""
    monkeypatch.setattr(shards_mod, "READ_CHUNK", 512)
    monkeypatch.setattr(shards_mod, "_pinned", lambda n: torch.empty(n, dtype=torch.uint8))
    monkeypatch.setattr(shards_mod, "_copy_async", LateCopy)


@pytest.mark.parametrize("threads", [1, 3, 8])
@pytest.mark.usefixtures("late_ring")
def test_the_upload_ring_waits_for_each_copy(tmp_path: Path, threads: int) -> None:
    """`upload_into`'s ring on the CPU (plain buffers; copies that land only when waited for): many
    small pieces on several threads, the ring wrapping many times, every byte equal to the file."""
    # 512-byte pieces: "big" is 302 pieces, "f32" 8
    save_file(tensors(), str(tmp_path / "model.safetensors"))
    want = load_file(str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path, threads=threads)
    try:
        out = {n: torch.full(t.shape, 7, dtype=t.dtype) for n, t in want.items()}
        for n in want:
            s.upload_into(n, out[n])
        s.sync()
        for n, t in want.items():
            assert torch.equal(out[n], t), n
    finally:
        s.close()


@pytest.mark.usefixtures("late_ring")
def test_an_upload_that_fails_raises_at_sync(tmp_path: Path) -> None:
    save_file({"a": torch.ones(1000), "b": torch.ones(1000)}, str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path, threads=2)
    with (tmp_path / "model.safetensors").open("r+b") as f:
        f.truncate(6000)  # "b" is cut short
    out = {n: torch.empty(1000) for n in ("a", "b")}
    try:
        s.upload_into("a", out["a"])
        s.upload_into("b", out["b"])
        with pytest.raises(CheckpointError, match="ends inside tensor b"):
            s.sync()
        assert torch.equal(out["a"], torch.ones(1000))
    finally:
        s.close()


@pytest.mark.usefixtures("late_ring")
def test_close_drops_the_uploads_not_begun(tmp_path: Path, monkeypatch) -> None:
    """A load that stops early (cancelled, or failed elsewhere) does not read the rest of the file."""
    save_file({f"t{i}": torch.ones(1024) for i in range(50)}, str(tmp_path / "model.safetensors"))
    s = ShardSet(tmp_path, threads=1)
    reads: list[int] = []
    pread = s._pread
    gate = threading.Event()

    def counted(e, buf, offset):  # the first piece waits until everything is queued
        gate.wait(10)
        reads.append(offset)
        pread(e, buf, offset)

    monkeypatch.setattr(s, "_pread", counted)
    for i in range(50):
        s.upload_into(f"t{i}", torch.empty(1024))
    gate.set()
    s.close()
    assert 1 <= len(reads) < 50 * 8
