"""kernels.gemv (the decode step's one-token matmuls) against F.linear in float64.

Without a GPU the Triton kernel runs under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
at small shapes; on the device the same tests run on CUDA. Shapes cover: N not a multiple of the
block (clamped rows), K not a multiple of the K block (masked tail), split-K (the deterministic
second pass) and a bias; several rows of x go to F.linear.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import gemv
from hybrid_agent.kernels.errors import KernelInputError
from hybrid_agent.kernels.gemv import CONFIGS, GemvConfig, default_config, gemv_config, gemv_ref
from hybrid_agent.kernels.testing import rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def _inputs(m: int, n: int, k: int, dtype: torch.dtype, dev: str, bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dev, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dev, dtype)
    b = torch.randn(n, generator=g).to(dev, dtype) if bias else None
    return x, w, b


def _exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize(
    "m, n, k, cfg",
    [
        (1, 40, 96, GemvConfig(16, 32, 1, 4)),  # N % block_n != 0: clamped last rows
        (1, 40, 296, GemvConfig(16, 32, 1, 4, 4)),  # 2 trips of 4 tiles, 1 lone tile, a tail of 8
        (1, 33, 296, GemvConfig(8, 32, 1, 4, 1)),  # one tile a trip
        (1, 48, 100, GemvConfig(16, 32, 1, 4)),  # K % block_k != 0: masked tail
        (1, 24, 256, GemvConfig(8, 32, 4, 4)),  # split-K, exact shares
        (1, 24, 200, GemvConfig(8, 32, 3, 4)),  # split-K with a short last share and a tail
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(dev: str, m: int, n: int, k: int, cfg: GemvConfig, dtype: torch.dtype,
                             bias: bool) -> None:  # fmt: skip
    x, w, b = _inputs(m, n, k, dtype, dev, bias, seed=m * 1000 + n + k)
    out = gemv(x, w, b, config=cfg)
    assert out.shape == (m, n) and out.dtype == dtype
    assert torch.isfinite(out).all()
    want = _exact(x, w, b)
    assert rel_err(out.double(), want) < TOL[dtype]
    # against the reference in the same dtype too (the engine swaps one for the other)
    assert rel_err(out.double(), gemv_ref(x, w, b).double()) < TOL[dtype]


def test_gemv_every_output_written(dev: str) -> None:
    """Each output depends on its own row of W: permuting W's rows permutes the outputs exactly."""
    x, w, _ = _inputs(1, 56, 128, torch.float32, dev, False, seed=3)
    cfg = GemvConfig(16, 32, 2, 4)
    perm = torch.randperm(56, generator=torch.Generator().manual_seed(1)).to(dev)
    a, p = gemv(x, w, config=cfg), gemv(x, w[perm].contiguous(), config=cfg)
    assert torch.equal(a[:, perm], p)


def test_gemv_leading_dims_and_deterministic(dev: str) -> None:
    x, w, b = _inputs(1, 40, 160, torch.bfloat16, dev, True, seed=5)
    x3 = x.view(1, 1, 160)
    cfg = GemvConfig(8, 32, 4, 4)
    out = gemv(x3, w, b, config=cfg)
    assert out.shape == (1, 1, 40)
    assert torch.equal(out, gemv(x3, w, b, config=cfg))  # split-K reduced in a fixed order
    assert rel_err(out.double(), _exact(x3, w, b)) < TOL[torch.bfloat16]


def test_gemv_default_config_and_table(dev: str) -> None:
    """Without a config the table / default_config is used (split-K for a narrow, deep matrix)."""
    assert default_config(3840, 11008).split_k > 1 and default_config(22016, 3840).split_k == 1
    x, w, _ = _inputs(1, 24, 2048, torch.float32, dev, False, seed=9)
    assert default_config(24, 2048).split_k > 1
    assert rel_err(gemv(x, w).double(), _exact(x, w, None)) < TOL[torch.float32]


def test_gemv_table_is_read_only_and_chosen_by_a_function() -> None:
    """The measured table cannot be changed in place; `gemv_config` returns its entry for a listed
    (N, K) and `default_config`'s otherwise (callers with other choices pass `config=`)."""
    with pytest.raises(TypeError):
        CONFIGS[(24, 2048)] = GemvConfig()  # type: ignore[index]
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    assert gemv_config(cuda, (3840, 11008), bf16) == GemvConfig(16, 256, 2, 4, 2)
    assert gemv_config(cuda, (100352, 3840), bf16) == GemvConfig(8, 512, 1, 4, 2)
    assert gemv_config(cuda, (24, 2048), bf16) == default_config(24, 2048)


def test_gemv_bad_inputs() -> None:
    x, w = torch.randn(1, 8), torch.randn(4, 9)
    with pytest.raises(KernelInputError, match="do not multiply"):
        gemv(x, w)
    with pytest.raises(KernelInputError, match="bias"):
        gemv(torch.randn(1, 9), w, torch.randn(5))
    with pytest.raises(KernelInputError, match="dtype"):
        gemv(torch.randn(1, 9), w.double())


@pytest.mark.parametrize("m", [2, 8, 64])
def test_gemv_several_rows_run_linear(dev: str, m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batched decode step's rows (and a prefill's) are a matrix product: the reference (cuBLAS /
    CPU BLAS) runs them, reading W once for every row, never the one-row kernel."""
    import hybrid_agent.kernels.triton_gemv as tg

    monkeypatch.setattr(tg, "gemv_triton", lambda *a: pytest.fail("the one-row kernel ran for several rows"))
    x, w, b = _inputs(m, 40, 96, torch.float32, dev, True, seed=m)
    assert torch.equal(gemv(x, w, b), F.linear(x, w, b))
