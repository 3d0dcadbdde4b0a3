"""Every launch variant of the chunked scans that bench/gpu_kernels.py may choose (the modules'
REFERENCE and VARIANTS, applied over CONFIG) against the torch reference: on the CPU interpreter at
small shapes in the default run, and on the GPU at real shapes under `pytest -m gpu`.

Output tolerances as in test_kernels_triton.py / test_kernels_gpu.py. The final state is checked
too: variants that keep the state's own products above 16 bits (prec 1 tf32, prec 2 hi + lo) must
hold it to 1e-3 on the interpreter (exact fp32 products) and 3e-3 on the GPU (tf32 products, and
the 16-bit entering state in the output); the 16-bit variants (prec 0, the split GDN path's 16-bit
W/U) only to the 16-bit output tolerance, 2e-2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hybrid_agent.kernels import triton_gated_delta_rule as tgdr
from hybrid_agent.kernels import triton_ssd_scan as tssd
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule_ref
from hybrid_agent.kernels.ssd_scan import ssd_scan_ref
from hybrid_agent.kernels.testing import make_gdr_inputs, make_ssd_inputs, rel_err

from hybrid_agent import kernels

SSD_CASES = [tssd.REFERENCE, *tssd.VARIANTS]
GDN_CASES = [tgdr.REFERENCE, *tgdr.VARIANTS]
ON_GPU = torch.cuda.is_available()


@contextmanager
def _config(module, variant: dict[str, int]) -> Iterator[None]:
    saved = module.CONFIG
    module.CONFIG = {**saved, **variant}
    try:
        yield
    finally:
        module.CONFIG = saved


def _state_tol(variant: dict[str, int], key: str, dtype: torch.dtype, default_prec: int) -> float:
    if dtype == torch.float32:
        return 1e-4
    if variant.get(key, default_prec) == 0 or variant.get("fu_t16", 0):
        return 2e-2
    return 3e-3 if ON_GPU else 1e-3


def _ssd_check(dev: str, variant: dict[str, int], shape: tuple[int, ...], dtype: torch.dtype) -> None:
    b, t, h, g, p, n = shape
    x, dt, A, B, C, D, s0 = make_ssd_inputs(b, t, h, g, p, n, seed=t + p, with_init=True, device=dev)
    x, B, C = (a.to(dtype) for a in (x, B, C))
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0)
    with _config(tssd, variant):
        y, s = kernels.ssd_scan(x, dt, A, B, C, D=D, initial_state=s0)
    out_tol = 5e-5 if dtype == torch.float32 else 2e-2
    if ON_GPU and dtype == torch.float32:
        out_tol = 1e-4
    assert rel_err(y, y_ref) < out_tol
    key = "fu_prec" if variant.get("fused", tssd.CONFIG["fused"]) else "st_prec"
    assert rel_err(s, s_ref) < _state_tol(variant, key, dtype, tssd.CONFIG[key])


def _gdn_check(dev: str, variant: dict[str, int], shape: tuple[int, ...], dtype: torch.dtype) -> None:
    b, t, h, dk, dv = shape
    q, k, v, g, beta, s0 = make_gdr_inputs(
        b, t, h, dk, dv, seed=t + dk, with_init=True, neg_eig=True, device=dev
    )
    q, k, v = (a.to(dtype) for a in (q, k, v))
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0)
    with _config(tgdr, variant):
        o, s = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    out_tol = (1e-4 if ON_GPU else 5e-5) if dtype == torch.float32 else 2e-2
    assert rel_err(o, o_ref) < out_tol
    fused = variant.get("fused", tgdr.CONFIG["fused"])
    state_tol = _state_tol(variant, "fu_prec", dtype, tgdr.CONFIG["fu_prec"]) if fused else 2e-2
    assert rel_err(s, s_ref) < (1e-4 if dtype == torch.float32 else state_tol)


@pytest.mark.parametrize("variant", SSD_CASES, ids=str)
def test_ssd_variants_small(dev, variant):
    if ON_GPU:
        pytest.skip("the GPU runs the real-shape version below")
    _ssd_check(dev, variant, (1, 70, 2, 1, 16, 32), torch.bfloat16)


@pytest.mark.parametrize("variant", GDN_CASES, ids=str)
def test_gdn_variants_small(dev, variant):
    if ON_GPU:
        pytest.skip("the GPU runs the real-shape version below")
    _gdn_check(dev, variant, (1, 70, 1, 16, 32), torch.bfloat16)
    if variant.get("fu_ksplit"):  # dk 48 is split into 32 + 16 (96 into 64 + 32 on the GPU)
        assert tgdr._k_split(48, True) == (32, 16)
        _gdn_check(dev, variant, (1, 70, 1, 48, 32), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("variant", SSD_CASES, ids=str)
def test_ssd_variants_gpu(dev, variant, dtype):
    _ssd_check(dev, variant, (2, 1037, 8, 2, 128, 128), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize(
    "shape", [(2, 1037, 4, 128, 128), (1, 1037, 6, 96, 192)], ids=["k128v128", "k96v192"]
)
@pytest.mark.parametrize("variant", GDN_CASES, ids=str)
def test_gdn_variants_gpu(dev, variant, shape):
    _gdn_check(dev, variant, shape, torch.bfloat16)
    if shape[3] == 128:
        _gdn_check(dev, variant, shape, torch.float32)


@pytest.mark.parametrize(
    "variant", [{"st_acc": 0, "st_prec": 3}, {}], ids=["session3_fp16_scaled", "default"]
)
@pytest.mark.parametrize("scale", [1e5, 1e-7], ids=["above_fp16_range", "below_fp16_normals"])
def test_ssd_fp16_state_update_range(dev, scale, variant):
    """Session 3's state update (`st_acc` 0, `st_prec` 3) rounds its operands to fp16 after
    power-of-two scaling: x and B far above fp16's range (65504) or below its normals (6e-5) must
    keep the state as precise as at unit scale. Unscaled, the first overflows to inf and the second
    loses its digits. The default (16-bit products in the input dtype, bf16 here) must too."""
    if ON_GPU:
        shape = (1, 1037, 4, 1, 128, 128)
    else:
        shape = (1, 70, 2, 1, 16, 32)
    b, t, h, g, p, n = shape
    x, dt, A, B, C, D, s0 = make_ssd_inputs(b, t, h, g, p, n, seed=11, with_init=True, device=dev)
    x, B, C = (x * scale).to(torch.bfloat16), (B * scale).to(torch.bfloat16), C.to(torch.bfloat16)
    s0 = s0 * scale * scale
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0)
    with _config(tssd, {"fused": 0, **variant}):
        y, s = kernels.ssd_scan(x, dt, A, B, C, D=D, initial_state=s0)
    assert rel_err(y, y_ref) < 2e-2
    assert rel_err(s, s_ref) < (3e-3 if ON_GPU else 1e-3)
