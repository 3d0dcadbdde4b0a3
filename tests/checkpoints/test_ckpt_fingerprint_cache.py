"""The model fingerprint is hashed once per checkpoint and remembered (model/checkpoints/
fingerprint_cache.py): a later load hashes no weight byte and gives the full hash's value; a touched or
rewritten file, another dtype, or a corrupt cache file means a full hash again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hybrid_agent.model import HybridConfig, HybridLM, load_model
from hybrid_agent.model.checkpoints import digests, fingerprint_cache
from hybrid_agent.model.checkpoints.fingerprint_cache import CACHE_FILE, FingerprintCache


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The number of weight bytes hashed since the test began (the loader's only hash function)."""
    count = [0]
    real = digests._sha256

    def counting(header: bytes, data: memoryview) -> str:
        count[0] += data.nbytes
        return real(header, data)

    monkeypatch.setattr(digests, "_sha256", counting)
    return count


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(fingerprint_cache.CACHE_DIR_ENV, str(folder))
    return folder


def age(folder: Path, seconds: float = 60) -> None:
    """Date every file of `folder` back (a checkpoint written moments ago is not cached yet)."""
    for p in folder.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def save_tiny(folder: Path, seed: int = 0) -> HybridLM:
    cfg = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"], init_std=0.2,
                       attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
                       mamba2={"head_dim": 8, "d_state": 8}, mlp={"hidden_dim": 64})  # fmt: skip
    torch.manual_seed(seed)
    model = HybridLM(cfg).eval()
    model.save_pretrained(folder)
    age(folder)
    return model


def test_second_load_hashes_nothing_and_gives_the_full_hash(tmp_path, cache_dir, hashed):
    ours = save_tiny(tmp_path / "m")
    full = ours.fingerprint  # HybridLM's own definition, from the weights in memory
    first, _, _ = load_model(tmp_path / "m")
    assert hashed[0] > 0 and first.fingerprint == full
    assert (cache_dir / CACHE_FILE).is_file()
    hashed[0] = 0
    second, _, _ = load_model(tmp_path / "m")
    assert hashed[0] == 0
    assert second.fingerprint == full
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # Without the cache the weights are hashed, to the same value.
    third, _, _ = load_model(tmp_path / "m", cache_fingerprint=False)
    assert hashed[0] > 0 and third.fingerprint == full


def test_a_touched_or_rewritten_file_is_hashed_again(tmp_path, cache_dir, hashed):
    save_tiny(tmp_path / "m")
    before = load_model(tmp_path / "m")[0].fingerprint
    weights = tmp_path / "m" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # `touch`: same bytes
    hashed[0] = 0
    assert load_model(tmp_path / "m")[0].fingerprint == before
    assert hashed[0] > 0
    other = save_tiny(tmp_path / "m", seed=1)  # other weights, same size and names
    assert weights.stat().st_size == st.st_size
    hashed[0] = 0
    after = load_model(tmp_path / "m")[0].fingerprint
    assert hashed[0] > 0 and after == other.fingerprint != before
    # The same files in another dtype are other bytes: another key, another fingerprint.
    hashed[0] = 0
    half = load_model(tmp_path / "m", dtype="bfloat16")[0]
    assert hashed[0] > 0 and half.fingerprint == other.to(torch.bfloat16).fingerprint


def test_a_checkpoint_written_just_now_is_not_cached_yet(tmp_path, cache_dir, hashed):
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2"])).save_pretrained(tmp_path)
    load_model(tmp_path)
    hashed[0] = 0
    load_model(tmp_path)
    assert hashed[0] > 0  # its mtime could still change without the time moving on
    age(tmp_path)
    load_model(tmp_path)
    hashed[0] = 0
    load_model(tmp_path)
    assert hashed[0] == 0


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b"[1, 2, 3]",
        b'{"format": 1, "fingerprints": []}',
        b'{"format": 99, "fingerprints": {}}',
        b" " * (fingerprint_cache.MAX_FILE_BYTES + 10),
    ],
)
def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path, cache_dir, hashed, content):
    ours = save_tiny(tmp_path / "m")
    cache_dir.mkdir()
    (cache_dir / CACHE_FILE).write_bytes(content)
    assert load_model(tmp_path / "m")[0].fingerprint == ours.fingerprint
    hashed[0] = 0
    assert load_model(tmp_path / "m")[0].fingerprint == ours.fingerprint
    assert hashed[0] == 0  # the next load found the entry the first one wrote over the bad file


def test_entries_that_are_not_digests_are_never_returned(tmp_path, cache_dir, hashed):
    ours = save_tiny(tmp_path / "m")
    load_model(tmp_path / "m")
    data = json.loads((cache_dir / CACHE_FILE).read_text())
    (key,) = data["fingerprints"]
    for bad in ("../../etc/passwd", "0" * 63, {"x": 1}, "A" * 64):
        data["fingerprints"][key] = bad
        (cache_dir / CACHE_FILE).write_text(json.dumps(data))
        assert FingerprintCache().get(key) is None
        hashed[0] = 0
        assert load_model(tmp_path / "m")[0].fingerprint == ours.fingerprint
        assert hashed[0] > 0


def test_an_unwritable_cache_folder_is_no_error(tmp_path, cache_dir, hashed):
    ours = save_tiny(tmp_path / "m")
    cache_dir.write_text("a file where the folder should be")
    assert load_model(tmp_path / "m")[0].fingerprint == ours.fingerprint
    assert cache_dir.read_text() == "a file where the folder should be"


def test_the_cache_keeps_its_newest_entries(tmp_path):
    cache = FingerprintCache(tmp_path)
    for i in range(fingerprint_cache.MAX_ENTRIES + 5):
        cache.put(f"{i:064x}", f"{i:064x}")
    assert cache.get(f"{0:064x}") is None
    newest = f"{fingerprint_cache.MAX_ENTRIES + 4:064x}"
    assert cache.get(newest) == newest
    with pytest.raises(ValueError):
        cache.put(f"{1:064x}", "not a digest")


@pytest.mark.gpu
def test_a_cuda_load_with_the_fingerprint_cached_equals_the_hashed_one(tmp_path, cache_dir, hashed):
    """With the fingerprint cached, CUDA weights go through the pinned upload ring (shards.py)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ours = save_tiny(tmp_path / "m")
    first = load_model(tmp_path / "m", device="cuda", dtype="float32")[0]  # hashed on the CPU bytes
    hashed[0] = 0
    second = load_model(tmp_path / "m", device="cuda", dtype="float32")[0]
    assert hashed[0] == 0 and first.fingerprint == second.fingerprint == ours.fingerprint
    pairs = zip(first.state_dict().items(), ours.state_dict().values(), strict=True)
    assert all(torch.equal(a.cpu(), b) for (_, a), b in pairs)
    pairs = zip(second.state_dict().values(), ours.state_dict().values(), strict=True)
    assert all(torch.equal(a.cpu(), b) for a, b in pairs)
