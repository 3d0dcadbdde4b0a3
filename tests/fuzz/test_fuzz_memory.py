"""Fuzzing the snapshot codec and the blob store (memory/codec.py, memory/blobs.py, memory/blob_read.py).

A snapshot's tensors become one safetensors image (`tensors_to_bytes`), stored as a chunked,
content-addressed blob; a load reads the blob back, checking every chunk's sha256, and decodes the
image without copying (`tensors_from_buffer`). Properties: any tensors round-trip exactly; any byte
string given to the decoder is refused with `CorruptDataError` or decodes to tensors that round-trip
in turn, in bounded time; any damage to a stored blob is refused with `CorruptDataError` by both
readers, never returned as data and never another exception.
"""

from __future__ import annotations

import json
import struct
import time
from unittest import mock

import pytest
import sqlalchemy as sa
import torch
from hybrid_agent.memory import CorruptDataError, blob_read, blobs
from hybrid_agent.memory.codec import _DTYPES, tensors_from_buffer, tensors_to_bytes
from hybrid_agent.memory.schema import Base, Blob, BlobChunk
from hybrid_agent.memory.sqlite_chunks import chunk_readers
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

DTYPES = sorted(_DTYPES.values(), key=str)
NAMES = st.text(st.characters(codec=None, exclude_categories=()), max_size=12).filter(
    lambda s: s != "__metadata__"
)


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = draw(st.binary(min_size=numel * itemsize, max_size=numel * itemsize))
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    t = t.view(dtype).reshape(shape)
    return t.t() if t.dim() == 2 and draw(st.booleans()) else t  # a non-contiguous view too


def as_buffer(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaNs and invalid bools included)."""
    bits = lambda t: t.contiguous().reshape(-1).view(torch.uint8)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def round_trip(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return tensors_from_buffer(as_buffer(bytes(tensors_to_bytes(named))), what="fuzz")


def test_tensors_round_trip_exactly(budget) -> None:
    @budget
    @given(st.dictionaries(NAMES, tensors(), max_size=5))
    def prop(named: dict[str, torch.Tensor]) -> None:
        back = round_trip(named)
        assert back.keys() == named.keys()
        assert all(same(back[k], v) for k, v in named.items())

    prop()


def test_the_reserved_metadata_name_is_refused() -> None:
    """A reader skips the `__metadata__` key, so a tensor of that name used to vanish on the way back."""
    with pytest.raises(ValueError, match="__metadata__"):
        tensors_to_bytes({"__metadata__": torch.zeros(2)})


def image(header: str, data: bytes = b"") -> bytes:
    raw = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + data


def decode_or_refuse(data: bytes) -> None:
    try:
        out = tensors_from_buffer(as_buffer(data), what="fuzz")
    except CorruptDataError as exc:
        assert str(exc).startswith("fuzz: ") and len(str(exc)) < 1000
        return
    back = round_trip(out)
    assert back.keys() == out.keys() and all(same(back[k], v) for k, v in out.items())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
DIM = st.integers(-2, 6) | st.booleans() | st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63, 2**64])
ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "BF16", "U8", "BOOL", "C64", "F99", ""]) | JSON,
        "shape": st.lists(DIM, max_size=4) | JSON,
        "data_offsets": st.lists(st.integers(-1, 40) | st.booleans(), min_size=2, max_size=2) | JSON,
    }
)
HEADERS = st.dictionaries(NAMES, ENTRY | JSON, max_size=3).map(json.dumps) | JSON.map(json.dumps)
# An image of such a header, with its true length or without (the data then starts with JSON).
IMAGES = st.builds(
    lambda header, data, honest: image(header, data)[0 if honest else 8 :],
    HEADERS,
    st.binary(max_size=40),
    st.booleans(),
)


def test_any_bytes_are_refused_or_decode(budget) -> None:
    @example(b"")
    @example(b"\x08" + b"\0" * 7 + b'{"a": 1}')
    @budget
    @given(st.binary(max_size=200))
    def prop(data: bytes) -> None:
        decode_or_refuse(data)

    prop()


def test_malformed_headers_are_refused_or_decode(budget) -> None:
    # json.loads raises ValueError for a number of 5000 digits and RecursionError for deep nesting.
    @example(image('{"t": {"dtype": "U8", "shape": [' + "1" * 5000 + '], "data_offsets": [0, 1]}}', b"x"))
    @example(image("[" * 100_000))
    # JSON true is an int to isinstance, and torch cannot view shapes past int64 or whose strides overflow.
    @example(image('{"t": {"dtype": "U8", "shape": [true], "data_offsets": [0, 1]}}', b"x"))
    @example(image('{"t": {"dtype": "U8", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}}'))
    @example(image('{"t": {"dtype": "F32", "shape": [0, 9223372036854775807, 2], "data_offsets": [0, 0]}}'))
    @budget
    @given(IMAGES)
    def prop(data: bytes) -> None:
        decode_or_refuse(data)

    prop()


def test_a_header_of_many_huge_dims_is_refused_in_bounded_time() -> None:
    """The element count was multiplied out over every dim: quadratic in a header of big numbers (5 s
    for these 20,000 dims, a 100 MB header would take hours); it stops once it exceeds the data."""
    shape = ",".join(["4611686018427387904"] * 20_000)
    data = image('{"t": {"dtype": "F32", "shape": [' + shape + '], "data_offsets": [0, 0]}}')
    start = time.perf_counter()
    with pytest.raises(CorruptDataError, match="bytes for shape") as err:
        tensors_from_buffer(as_buffer(data), what="fuzz")
    assert time.perf_counter() - start < 1.0 and len(str(err.value)) < 1000


# -- blobs ------------------------------------------------------------------------------------------

SMALL_CHUNK = 16  # so that a few dozen bytes make several chunks, and the parallel paths run


@pytest.fixture
def db(tmp_path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'blobs.db'}")
    # No fsync per commit: a throwaway file, and a few hundred commits per test.
    sa.event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous = OFF"))
    Base.metadata.create_all(engine)
    with (
        mock.patch.object(blobs, "CHUNK_SIZE", SMALL_CHUNK),
        mock.patch.object(blobs, "_PARALLEL_MIN_BYTES", 2 * SMALL_CHUNK),
    ):
        yield engine
    engine.dispose()


def store(engine: sa.Engine, data: bytes) -> str:
    blob = blobs.prepare_blob(data)
    with Session(engine) as s, s.begin():
        blobs.write_blob(s, blob)
    return blob.sha256


def read_all(engine: sa.Engine, sha: str) -> list[bytes | CorruptDataError]:
    """The blob (or the refusal) from `read_blob`, and `read_blob_tensor` without and with parallel
    readers, each on its own."""
    reads = [
        lambda s, _: blob_read.read_blob(s, sha, what="fuzz"),
        lambda s, _: bytes(blob_read.read_blob_tensor(s, sha, what="fuzz").numpy()),
        lambda s, readers: bytes(blob_read.read_blob_tensor(s, sha, what="fuzz", readers=readers).numpy()),
    ]
    out: list[bytes | CorruptDataError] = []
    with Session(engine) as s, chunk_readers(s) as readers:
        assert readers is not None
        for read in reads:
            try:
                out.append(read(s, readers))
            except CorruptDataError as exc:
                out.append(exc)
    return out


def test_blobs_round_trip_and_deduplicate(db: sa.Engine, budget) -> None:
    @budget
    @given(st.binary(max_size=5 * SMALL_CHUNK + 3))
    def prop(data: bytes) -> None:
        sha = store(db, data)
        assert read_all(db, sha) == [data] * 3
        with Session(db) as s, s.begin():
            assert blobs.write_blob(s, blobs.prepare_blob(data)) is False  # same bytes: one blob

    prop()


DAMAGE = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 5), st.binary(max_size=2 * SMALL_CHUNK)),
    st.tuples(st.just("digest"), st.integers(0, 5), st.text(max_size=70)),
    st.tuples(st.just("drop"), st.integers(0, 5), st.none()),
    st.tuples(st.sampled_from(["size", "chunk_size", "n_chunks"]), st.none(), st.integers(-3, 200)),
)


def test_damaged_blobs_are_refused(db: sa.Engine, budget) -> None:
    # An empty blob recorded with a negative size: torch.empty(-5) raised RuntimeError.
    @example(data=b"", damage=("size", None, -5))
    @budget
    @given(st.binary(max_size=4 * SMALL_CHUNK), DAMAGE)
    def prop(data: bytes, damage: tuple) -> None:
        sha = store(db, data)
        what, idx, value = damage
        with Session(db) as s, s.begin():
            if what in ("size", "chunk_size", "n_chunks"):
                s.execute(sa.update(Blob).where(Blob.sha256 == sha).values({what: value}))
            else:
                row = (BlobChunk.blob_sha256 == sha) & (BlobChunk.idx == idx)
                if what == "drop":
                    s.execute(sa.delete(BlobChunk).where(row))
                else:
                    s.execute(
                        sa.update(BlobChunk)
                        .where(row)
                        .values({"data" if what == "data" else "sha256": value})
                    )
        try:
            for got in read_all(db, sha):  # the damage is found, or it changed nothing
                assert got == data or (isinstance(got, CorruptDataError) and str(got).startswith("fuzz: "))
        finally:
            with Session(db) as s, s.begin():
                blobs.delete_unreferenced(s, [sha])

    prop()
