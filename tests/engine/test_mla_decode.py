"""kernels.mla_decode: the Triton kernel (CPU interpreter here, the GPU under -m gpu) against its
reference, and the reference against the model's absorbed MLA attention written out in float64."""

from __future__ import annotations

import os

import pytest
import torch
from hybrid_agent.kernels.mla_decode import mla_decode_ref


def _inputs(B: int, H: int, C: int, R: int, M: int, L: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator(device).manual_seed(seed)
    q_lat = torch.randn(B, H, C, generator=g, device=device).to(dtype) * 0.2
    q_rot = torch.randn(B, H, R, generator=g, device=device).to(dtype) * 0.2
    lat = torch.randn(B, M, C, generator=g, device=device).to(dtype)
    rope = torch.randn(B, M, R, generator=g, device=device).to(dtype)
    pos = torch.tensor([L - 1], device=device)
    return q_lat, q_rot, lat, rope, pos


def test_reference_is_absorbed_attention_in_float64() -> None:
    q_lat, q_rot, lat, rope, pos = _inputs(2, 3, 8, 4, 20, 13, torch.float64, "cpu", 0)
    lat[:, 13:] = float("nan")  # slots past the length must not be read
    out = mla_decode_ref(q_lat, q_rot, lat, rope, pos)
    for b in range(2):
        for h in range(3):
            s = torch.stack([q_lat[b, h] @ lat[b, j] + q_rot[b, h] @ rope[b, j] for j in range(13)])
            want = (s.softmax(0)[:, None] * lat[b, :13]).sum(0)
            torch.testing.assert_close(out[b, h], want)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (set in conftest)"
)
@pytest.mark.parametrize("L", [1, 37, 200])
def test_triton_interpreter_matches_reference(L: int) -> None:
    from hybrid_agent.kernels.mla_decode import _mla_decode_triton

    q_lat, q_rot, lat, rope, pos = _inputs(2, 3, 24, 8, 256, L, torch.float32, "cpu", L)
    lat[:, L:] = float("nan")
    out = _mla_decode_triton(q_lat, q_rot, lat, rope, pos)
    torch.testing.assert_close(out, mla_decode_ref(q_lat, q_rot, lat, rope, pos), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("L", [1, 1000, 70000])
def test_triton_gpu_matches_reference(L: int) -> None:
    from hybrid_agent.kernels.mla_decode import _mla_decode_triton

    q_lat, q_rot, lat, rope, pos = _inputs(1, 16, 512, 64, 70016, L, torch.bfloat16, "cuda", L)
    lat[:, L:] = float("nan")
    out = _mla_decode_triton(q_lat, q_rot, lat, rope, pos).float()
    ref = mla_decode_ref(q_lat, q_rot, lat, rope, pos).float()
    assert float((out - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (set in conftest)"
)
def test_per_row_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    """pos (B,): each row over its own length (NaN past it must not be read), in the kernel and the
    reference, each equal to the row run alone (8 splits of 8 keys: several splits, a short test)."""
    import sys

    from hybrid_agent.kernels.mla_decode import _mla_decode_triton

    md = sys.modules["hybrid_agent.kernels.mla_decode"]  # the module (the package exports the function)
    monkeypatch.setattr(md, "NSPLIT", 8)
    monkeypatch.setattr(md, "BLOCK_N", 8)

    lens = [1, 40, 9]
    q_lat, q_rot, lat, rope, _ = _inputs(3, 2, 16, 8, 48, 1, torch.float32, "cpu", 7)
    for b, n in enumerate(lens):
        lat[b, n:] = float("nan")
    pos = torch.tensor([n - 1 for n in lens])
    out = _mla_decode_triton(q_lat, q_rot, lat, rope, pos)
    ref = mla_decode_ref(q_lat, q_rot, lat, rope, pos)
    assert not torch.isnan(ref).any()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for b in range(3):
        one = (q_lat[b : b + 1], q_rot[b : b + 1], lat[b : b + 1], rope[b : b + 1], pos[b : b + 1])
        assert torch.equal(out[b : b + 1], _mla_decode_triton(*one))
        torch.testing.assert_close(ref[b : b + 1], mla_decode_ref(*one), rtol=0, atol=0)


def test_importing_the_model_imports_no_triton() -> None:
    """Triton is imported when a kernel runs, not on a start's import of the model (80 ms on a CPU)."""
    import subprocess
    import sys

    code = "import sys\nimport hybrid_agent.model.checkpoints.loader\nprint('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
