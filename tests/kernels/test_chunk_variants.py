"""Every launch variant of the chunked scans that bench/gpu_kernels.py may choose (the modules'
`reference_overrides()` and `variant_overrides()`, applied over `launch_config`'s choice) against
the torch reference: on the CPU interpreter at small shapes in the default run, and on the GPU at real
shapes under `pytest -m gpu`.

Output tolerances as in test_kernels_triton.py / test_kernels_gpu.py. The final state is checked
too: variants that keep the state's own products above 16 bits (prec 1 tf32, prec 2 hi + lo) must
hold it to 1e-3 on the interpreter (exact fp32 products) and 3e-3 on the GPU (tf32 products, and
the 16-bit entering state in the output); the 16-bit variants (prec 0, the split GDN path's 16-bit
W/U) only to the 16-bit output tolerance, 2e-2.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, replace

import pytest
import torch
from hybrid_agent.kernels import triton_gated_delta_rule as tgdr
from hybrid_agent.kernels import triton_ssd_scan as tssd
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule_ref
from hybrid_agent.kernels.ssd_scan import ssd_scan_ref
from hybrid_agent.kernels.testing import make_gdr_inputs, make_ssd_inputs, rel_err

SSD_CASES = [tssd.reference_overrides(), *tssd.variant_overrides()]
GDN_CASES = [tgdr.reference_overrides(), *tgdr.variant_overrides()]
ON_GPU = torch.cuda.is_available()


def _default(module, x: torch.Tensor) -> dict[str, int]:
    """The module's own launch choice for inputs like x, as a dict."""
    return asdict(module.launch_config(x.device, tuple(x.shape), x.dtype))


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
    config = replace(tssd.launch_config(x.device, tuple(x.shape), x.dtype), **variant)
    y, s = tssd.ssd_scan_triton(x, dt, A, B, C, D=D, initial_state=s0, config=config)
    out_tol = 5e-5 if dtype == torch.float32 else 2e-2
    if ON_GPU and dtype == torch.float32:
        out_tol = 1e-4
    assert rel_err(y, y_ref) < out_tol
    default = _default(tssd, x)
    key = "fu_prec" if variant.get("fused", default["fused"]) else "st_prec"
    assert rel_err(s, s_ref) < _state_tol(variant, key, dtype, default[key])


def _gdn_check(dev: str, variant: dict[str, int], shape: tuple[int, ...], dtype: torch.dtype) -> None:
    b, t, h, dk, dv = shape
    q, k, v, g, beta, s0 = make_gdr_inputs(
        b, t, h, dk, dv, seed=t + dk, with_init=True, neg_eig=True, device=dev
    )
    q, k, v = (a.to(dtype) for a in (q, k, v))
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0)
    config = replace(tgdr.launch_config(q.device, tuple(q.shape), q.dtype), **variant)
    o, s = tgdr.chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state=s0, config=config)
    out_tol = (1e-4 if ON_GPU else 5e-5) if dtype == torch.float32 else 2e-2
    assert rel_err(o, o_ref) < out_tol
    default = _default(tgdr, q)
    fused = variant.get("fused", default["fused"])
    state_tol = _state_tol(variant, "fu_prec", dtype, default["fu_prec"]) if fused else 2e-2
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
    config = replace(tssd.launch_config(x.device, tuple(x.shape), x.dtype), **{"fused": 0, **variant})
    y, s = tssd.ssd_scan_triton(x, dt, A, B, C, D=D, initial_state=s0, config=config)
    assert rel_err(y, y_ref) < 2e-2
    assert rel_err(s, s_ref) < (3e-3 if ON_GPU else 1e-3)


def test_launch_configs_are_frozen_values_chosen_by_a_function() -> None:
    """Each chunked scan's launch is a frozen value returned for (device, shape, dtype), with the
    values its sweeps chose; there is no module-level table to mutate (callers pass `config=`)."""
    ssd = tssd.launch_config(torch.device("cuda"), (1, 16384, 32, 128), torch.bfloat16)
    assert asdict(ssd) == {
        "fused": 0, "fu_L": 64, "fu_bp": 64, "fu_warps": 4, "fu_stages": 2, "fu_prec": 2, "narrow": 0,
        "st_acc": 1, "st_bp": 64, "st_bn": 64, "st_warps": 4, "st_stages": 3, "st_prec": 0, "st_pre": 1,
        "out_bp": 128, "out_warps": 8, "L": 128,
    }  # fmt: skip
    gdn = tgdr.launch_config(torch.device("cuda"), (1, 16384, 32, 128), torch.bfloat16)
    assert asdict(gdn) == {
        "fused": 1, "fu_bv": 0, "fu_warps": 4, "fu_stages": 3, "fu_prec": 2, "fu_t16": 0, "fu_tmask": 1,
        "fu_ksplit": 0, "kkt_lower": 1, "qk_pre": 1, "narrow": 1, "solve_warps": 1, "u_bv": 64,
        "prep_warps": 4, "st_bv": 32, "st_warps": 4, "st_stages": 2, "out_bv": 128, "out_warps": 4,
    }  # fmt: skip
    with pytest.raises(FrozenInstanceError):
        ssd.st_warps = 8  # type: ignore[misc]
    for module in (tssd, tgdr):
        assert not hasattr(module, "CONFIG")
        module.reference_overrides()["fused"] = 7  # a fresh dict each call: nothing shared changes
        assert module.reference_overrides()["fused"] != 7
