"""kernels/attention_decode.py: the Triton flash-decoding kernel (under TRITON_INTERPRET=1 on the CPU,
natively on a GPU) against the fp32 reference, and the reference against SDPA over the valid slots."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import attention_decode as ad


def inputs(B: int, H: int, G: int, D: int, M: int, L: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator(device).manual_seed(seed)
    q = torch.randn(B, H, G, D, generator=g, device=device).to(dtype)
    k = torch.randn(B, H, M, D, generator=g, device=device).to(dtype)
    v = torch.randn(B, H, M, D, generator=g, device=device).to(dtype)
    k[:, :, L:] = 1e4  # garbage past the valid slots must not be read
    v[:, :, L:] = float("nan")
    return q, k, v, torch.tensor([L - 1], device=device)


def test_reference_is_sdpa_over_valid_slots() -> None:
    q, k, v, pos = inputs(2, 3, 2, 16, 40, 29, torch.float32, "cpu", 0)
    want = F.scaled_dot_product_attention(q, k[:, :, :29], v[:, :, :29], scale=0.3)
    assert torch.allclose(ad.attention_decode_ref(q, k, v, pos, scale=0.3), want, atol=1e-5)


@pytest.mark.parametrize(
    "B, H, G, D, M, L, dtype",
    [
        (1, 3, 1, 32, 300, 1, torch.float32),  # one key
        (1, 2, 1, 64, 300, 257, torch.float32),  # several splits, ragged last block
        (2, 2, 4, 16, 96, 70, torch.bfloat16),  # grouped queries, batch
        (1, 1, 3, 24, 5000, 4500, torch.float32),  # many keys per split; G, D not powers of two
        (1, 2, 12, 32, 400, 333, torch.bfloat16),  # G = 12 as in bench/gpu_mla.py's gqa-24/2
    ],
)  # fmt: skip
def test_triton_matches_reference(monkeypatch: pytest.MonkeyPatch, B, H, G, D, M, L, dtype) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        pytest.importorskip("triton")
        monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")  # the interpreter (tests/conftest.py sets it)
    q, k, v, pos = inputs(B, H, G, D, M, L, dtype, device, 1)
    got = ad.attention_decode(q, k, v, pos, scale=D**-0.5)
    want = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.dtype == q.dtype and not torch.isnan(got).any()
    assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())
