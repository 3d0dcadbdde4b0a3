"""kernels.moe_route (the router's softmax/sigmoid, top-k, normalisation and scaling in one launch)
against its torch reference: the Triton kernel under the interpreter at small shapes (tests/conftest.py
sets TRITON_INTERPRET=1 without a GPU), and on the device at the real MoE shapes (`gpu`)."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.errors import KernelInputError
from hybrid_agent.kernels.moe_route import moe_route, moe_route_ref

# n, e, k, scoring, bias, norm, scaling
CASES = [
    (1, 8, 2, "softmax", False, True, 1.0),  # Qwen-style: softmax, renormalised
    (3, 6, 3, "softmax", False, False, 1.0),  # E not a power of two: masked tail
    (2, 12, 4, "sigmoid", True, True, 2.5),  # Nemotron/DeepSeek-style: sigmoid, choice bias, scaling
    (4, 5, 1, "sigmoid", False, False, 1.0),
]


def _logits(n: int, e: int, dtype: torch.dtype, dev: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, e, generator=g) * 2).to(dev, dtype)


def check(got, want, dtype: torch.dtype, descending: bool = False) -> None:
    """The same experts with the same weights. Equal scores (bf16 logits repeat a value often among
    hundreds of experts) may come in either order: the kernel puts the lower id first, CUDA's topk does
    not promise an order among ties, and the MoE sum does not depend on it. So each row is compared in
    id order; without a choice bias the kernel's weights must also come in descending order."""
    (gw, gi), (ww, wi) = got, want
    assert gi.dtype == torch.int64 and gw.dtype == dtype and gw.shape == ww.shape
    gi, gw, wi, ww = gi.cpu(), gw.float().cpu(), wi.cpu(), ww.float().cpu()
    g_order, w_order = gi.argsort(-1), wi.argsort(-1)
    assert torch.equal(gi.gather(-1, g_order), wi.gather(-1, w_order))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(gw.gather(-1, g_order), ww.gather(-1, w_order), rtol=tol, atol=tol)
    if descending:
        assert bool((gw[:, :-1] >= gw[:, 1:]).all()), gw


@pytest.mark.parametrize("n, e, k, scoring, bias, norm, scaling", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_route_triton_matches_reference(dev, n, e, k, scoring, bias, norm, scaling, dtype) -> None:
    logits = _logits(n, e, dtype, dev, seed=n * 10 + e)
    b = (torch.randn(e, generator=torch.Generator().manual_seed(e)) * 0.3).to(dev) if bias else None
    kw = dict(scoring=scoring, bias=b, norm=norm, scaling=scaling, out_dtype=dtype)
    check(moe_route(logits, k, **kw), moe_route_ref(logits, k, **kw), dtype, descending=not bias)


def test_moe_route_reads_a_strided_view(dev) -> None:
    """The logits as columns of a wider row (the decode engine's stacked projection): read in place."""
    wide = _logits(2, 20, torch.float32, dev, seed=3)
    logits = wide[:, 4:12]
    assert not logits.is_contiguous()
    kw = dict(scoring="softmax", norm=True, out_dtype=torch.bfloat16)
    check(moe_route(logits, 3, **kw), moe_route_ref(logits.contiguous(), 3, **kw), torch.bfloat16)


def test_moe_route_bias_only_chooses(dev) -> None:
    """A large bias on one expert makes it chosen; its weight is still its unbiased score."""
    logits = _logits(1, 8, torch.float32, dev, seed=5)
    bias = torch.zeros(8, device=dev)
    worst = int(logits[0].argmin())
    bias[worst] = 10.0
    w, ids = moe_route(logits, 2, scoring="sigmoid", bias=bias)
    assert int(ids[0, 0]) == worst
    torch.testing.assert_close(w[0, 0].cpu(), logits[0, worst].sigmoid().cpu())


def test_moe_route_bad_inputs() -> None:
    logits = torch.randn(2, 8)
    with pytest.raises(KernelInputError, match="top_k"):
        moe_route(logits, 9)
    with pytest.raises(KernelInputError, match="scoring"):
        moe_route(logits, 2, scoring="relu")
    with pytest.raises(KernelInputError, match="bias"):
        moe_route(logits, 2, bias=torch.zeros(7))
    with pytest.raises(KernelInputError, match=r"\(N, E\)"):
        moe_route(logits[0], 2)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "e, k, scoring, bias, norm, scaling",
    [(256, 8, "softmax", False, True, 1.0), (128, 6, "sigmoid", True, True, 2.5),
     (512, 10, "softmax", False, True, 1.0)],
    ids=["qwen3.5-moe", "nemotron-3-nano", "e512"],
)  # fmt: skip
@pytest.mark.parametrize("n", [1, 4])
def test_moe_route_real_shapes_gpu(monkeypatch, n, e, k, scoring, bias, norm, scaling) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    logits = _logits(n, e, torch.bfloat16, "cuda", seed=e + n)
    b = torch.randn(e, device="cuda") * 0.01 if bias else None
    kw = dict(scoring=scoring, bias=b, norm=norm, scaling=scaling, out_dtype=torch.bfloat16)
    got = moe_route(logits, k, **kw)
    check(got, moe_route_ref(logits, k, **kw), torch.bfloat16, descending=not bias)
    graph = torch.cuda.CUDAGraph()  # no host read: it captures, and a replay reads the new logits
    with torch.cuda.graph(graph):
        out = moe_route(logits, k, **kw)
    logits.copy_(_logits(n, e, torch.bfloat16, "cuda", seed=e + n + 1))
    graph.replay()
    torch.cuda.synchronize()
    check(out, moe_route_ref(logits, k, **kw), torch.bfloat16, descending=not bias)
