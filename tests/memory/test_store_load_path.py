"""The load path (memory/blob_read.py's pipeline + memory/codec.py's zero-copy decoding): the same tensors
as the safetensors library gives, every dtype and odd alignment, damage found in any chunk of a blob
that is read in parallel, malformed headers refused, and loads straight onto the GPU (`-m gpu`)."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import sqlalchemy as sa
import torch
from hybrid_agent.memory import CorruptDataError, Store
from hybrid_agent.memory.blobs import CHUNK_SIZE
from hybrid_agent.memory.codec import tensors_from_buffer, tensors_to_bytes
from hybrid_agent.model import Page

FP = "f" * 64


def mixed_tensors() -> dict[str, torch.Tensor]:
    """Every common dtype, with odd byte counts in between so that later tensors are misaligned."""
    g = torch.Generator().manual_seed(3)
    return {
        "a_u8": torch.randint(0, 255, (7,), dtype=torch.uint8, generator=g),
        "b_f32": torch.randn(3, 5, generator=g),
        "c_bool": torch.rand(3, generator=g) > 0.5,
        "d_bf16": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "e_i64": torch.randint(-(2**40), 2**40, (4,), generator=g),
        "f_f16": torch.randn(5, generator=g).to(torch.float16),
        "g_f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "h_i32": torch.randint(-5, 5, (3, 1), dtype=torch.int32, generator=g),
        "i_empty": torch.zeros(0, 4),
        "j_scalar": torch.tensor(42),
    }


def as_buffer(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def test_zero_copy_decoding_equals_the_safetensors_library() -> None:
    data = safetensors.torch.save(mixed_tensors())  # as snapshots written before our own writer
    ours, theirs = tensors_from_buffer(as_buffer(data), what="t"), safetensors.torch.load(data)
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        assert torch.equal(ours[k], theirs[k]), k


def test_our_writer_is_read_by_the_library_aligned_and_deterministic() -> None:
    tensors = mixed_tensors() | {"big": torch.randn(3 * CHUNK_SIZE // 4 + 5)}  # the pool's copy path
    data = tensors_to_bytes(tensors)
    assert bytes(data) == bytes(tensors_to_bytes(dict(reversed(tensors.items()))))  # same bytes
    theirs = safetensors.torch.load(bytes(data))
    buf = as_buffer(bytes(data))
    ours = tensors_from_buffer(buf, what="t")
    for k, v in tensors.items():
        assert theirs[k].dtype == v.dtype and torch.equal(theirs[k], v), k
        assert torch.equal(ours[k], v), k
        if v.numel():  # every tensor aligned: a view of the buffer, never a copy
            assert ours[k].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr(), k
    # A view (non-contiguous, sharing storage with another entry) is stored as its values.
    base = torch.arange(12.0).view(3, 4)
    back = tensors_from_buffer(as_buffer(bytes(tensors_to_bytes({"t": base.t(), "b": base}))), what="t")
    assert torch.equal(back["t"], base.t()) and torch.equal(back["b"], base)


def test_decoded_tensors_view_the_buffer_and_are_independent() -> None:
    t = {"x": torch.arange(6, dtype=torch.float32), "y": torch.arange(4, dtype=torch.float32)}
    buf = as_buffer(bytes(tensors_to_bytes(t)))
    out = tensors_from_buffer(buf, what="t")
    assert out["x"].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()  # no copy
    out["x"].add_(1)
    assert torch.equal(out["y"], t["y"])  # views of disjoint ranges


def image(header: dict, data: bytes) -> torch.Tensor:
    raw = json.dumps(header).encode()
    return as_buffer(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "buf, why",
    [
        (as_buffer(b"\x01\x02"), "shorter than"),
        (as_buffer(struct.pack("<Q", 1 << 40) + b"{}"), "header length"),
        (as_buffer(struct.pack("<Q", 4) + b"\xff\xfe{}"), "not JSON"),
        (image([1, 2], b""), "not a JSON object"),
        (image({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
        (image({"x": {"dtype": "F32", "shape": 3, "data_offsets": [0, 4]}}, b"\0" * 4), "malformed shape"),
        (image({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "4 bytes for"),
        (
            image({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
            "outside the data",
        ),
        (
            image(
                {
                    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"\0" * 8,
            ),
            "overlaps",
        ),
        (image({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover 4 of the 8"),
    ],
)
def test_malformed_images_are_refused(buf: torch.Tensor, why: str) -> None:
    with pytest.raises(CorruptDataError, match=why) as err:
        tensors_from_buffer(buf, what="session s turn 3: recurrent state")
    assert "session s turn 3: recurrent state" in str(err.value)


def big_state() -> dict[str, torch.Tensor]:
    # 5 chunks and a bit: the parallel path, with a short last chunk; odd dtypes in between.
    g = torch.Generator().manual_seed(1)
    n = (5 * CHUNK_SIZE + 12345) // 4
    return {"a": torch.randn(n, generator=g), "b": torch.randn(3, generator=g).to(torch.bfloat16)} | {
        "c": torch.arange(17, dtype=torch.int64)
    }


def test_multi_chunk_round_trip(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    state = big_state()
    store.save_turn(sid, 1, events=[], recurrent=state, pages=[Page(0, 2, mixed_tensors())], n_tokens=2)
    snap = store.load_snapshot(sid)
    for k, v in state.items():
        assert torch.equal(snap.recurrent[k], v), k
    for k, v in mixed_tensors().items():
        assert torch.equal(snap.pages[0][2][k], v), k


@pytest.mark.parametrize("chunk", [0, 3, 5])
def test_damage_in_any_chunk_of_a_parallel_read_is_named(store: Store, chunk: int) -> None:
    sid = store.create_session("t", "/w", FP).id
    store.save_turn(sid, 1, events=[], recurrent=big_state(), n_tokens=1)
    with store._engine.begin() as conn:
        sha = conn.execute(sa.text("SELECT recurrent_blob FROM snapshots")).scalar_one()
        data = conn.execute(
            sa.text("SELECT data FROM blob_chunks WHERE blob_sha256 = :b AND idx = :i"),
            {"b": sha, "i": chunk},
        ).scalar_one()
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x10
        conn.execute(
            sa.text("UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b AND idx = :i"),
            {"d": bytes(damaged), "b": sha, "i": chunk},
        )
    with pytest.raises(CorruptDataError, match=rf"session {sid} turn 1: recurrent state: chunk {chunk} of"):
        store.load_snapshot(sid)


def test_a_truncated_chunk_is_damage(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    store.save_turn(sid, 1, events=[], recurrent=big_state(), n_tokens=1)
    with store._engine.begin() as conn:
        sha = conn.execute(sa.text("SELECT recurrent_blob FROM snapshots")).scalar_one()
        conn.execute(
            sa.text("UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b AND idx = 2"),
            {"d": b"short", "b": sha},
        )
    with pytest.raises(CorruptDataError, match=r"chunk 2 of .* failed its blake3 check"):
        store.load_snapshot(sid)


def test_a_size_record_that_disagrees_with_the_chunks_is_damage(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    store.save_turn(sid, 1, events=[], recurrent=big_state(), n_tokens=1)
    with store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE blobs SET size = size + :n"), {"n": 2 * CHUNK_SIZE})
    with pytest.raises(CorruptDataError, match="inconsistent size record"):
        store.load_snapshot(sid)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_straight_onto_the_gpu(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    state = big_state()
    store.save_turn(sid, 1, events=[], recurrent=state, pages=[Page(0, 2, mixed_tensors())], n_tokens=2)
    for _ in range(2):  # the second load reuses the pinned ring
        snap = store.load_snapshot(sid, device="cuda")
        for k, v in state.items():
            assert snap.recurrent[k].is_cuda and torch.equal(snap.recurrent[k].cpu(), v), k
        for k, v in mixed_tensors().items():
            assert torch.equal(snap.pages[0][2][k].cpu(), v), k
    with store._engine.begin() as conn:
        sha = conn.execute(sa.text("SELECT recurrent_blob FROM snapshots")).scalar_one()
        conn.execute(
            sa.text("UPDATE blob_chunks SET data = :d WHERE blob_sha256 = :b AND idx = 4"),
            {"d": bytes(CHUNK_SIZE), "b": sha},
        )
    with pytest.raises(CorruptDataError, match="chunk 4 of"):
        store.load_snapshot(sid, device="cuda")
