"""kernels.decode_fused: each reference against the model's own T == 1 arithmetic, and each Triton
kernel against its reference (CPU interpreter in the default run, the GPU under -m gpu)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kernels import causal_conv1d_step, rms_norm
from kernels.decode_fused import gdn_decode_prep_ref, residual_rms_norm_ref, silu_mul_ref
from model.gated_deltanet import l2_normalize

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = (["cpu"] if INTERP else []) + (
    [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []
)


def _gdn_inputs(
    B: int, Hk: int, Dk: int, Hv: int, Dv: int, W: int, dtype: torch.dtype, device: str, seed: int
):
    g = torch.Generator(device).manual_seed(seed)
    C = 2 * Hk * Dk + Hv * Dv
    N = C + 2 * Hv + 5  # [q | k | v | a | b | spare columns]
    proj = (torch.randn(B, N, generator=g, device=device) * 2).to(dtype)
    state = torch.randn(B, C, W - 1, generator=g, device=device)
    w = torch.randn(C, W, generator=g, device=device).to(dtype)
    bias = torch.randn(C, generator=g, device=device).to(dtype)
    a_log = torch.rand(Hv, generator=g, device=device) * 3
    dt_bias = torch.randn(Hv, generator=g, device=device)
    return proj, state, w, bias, a_log, dt_bias, dict(Hk=Hk, Dk=Dk, Hv=Hv, Dv=Dv, a_off=C, b_off=C + Hv)


def test_gdn_prep_reference_is_the_model_arithmetic() -> None:
    proj, state, w, bias, a_log, dt_bias, kw = _gdn_inputs(2, 2, 8, 4, 6, 4, torch.float32, "cpu", 0)
    s0 = state.clone()
    q, k, v, g, beta = gdn_decode_prep_ref(proj, state, w, bias, a_log, dt_bias, allow_neg_eigval=True, **kw)
    C = kw["a_off"]
    qkv = causal_conv1d_step(proj[:, :C], s0, w, bias)
    torch.testing.assert_close(state, s0)
    wq, wk, wv = qkv.split([16, 16, 24], dim=-1)
    torch.testing.assert_close(q, l2_normalize(wq.view(2, 2, 8)).repeat_interleave(2, 1))
    torch.testing.assert_close(k, l2_normalize(wk.view(2, 2, 8)).repeat_interleave(2, 1))
    torch.testing.assert_close(v, wv.reshape(2, 4, 6))
    torch.testing.assert_close(beta, 2 * proj[:, C + 4 : C + 8].sigmoid())
    torch.testing.assert_close(g, -a_log.exp() * F.softplus(proj[:, C : C + 4] + dt_bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 3, 12, 3, 20, 4, False), (2, 2, 16, 4, 8, 3, True)])
def test_gdn_prep_triton(device: str, shape: tuple) -> None:
    from kernels.triton_decode_fused import gdn_decode_prep_triton

    B, Hk, Dk, Hv, Dv, W, neg = shape
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    proj, state, w, bias, a_log, dt_bias, kw = _gdn_inputs(B, Hk, Dk, Hv, Dv, W, dtype, device, 1)
    s_ref = state.clone()
    want = gdn_decode_prep_ref(proj, s_ref, w, bias, a_log, dt_bias, allow_neg_eigval=neg, **kw)
    got = gdn_decode_prep_triton(proj, state, w, bias, a_log, dt_bias, allow_neg_eigval=neg, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, s_ref, rtol=1e-6, atol=1e-6)
    for name, x, y in zip(("q", "k", "v", "g", "beta"), got, want, strict=True):
        torch.testing.assert_close(x.float(), y.float(), **tol, msg=name)


def test_residual_rms_norm_reference_is_the_block_arithmetic() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 1, 16, generator=g).bfloat16(), torch.randn(2, 1, 16, generator=g).bfloat16()
    w1, w2 = torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) + 0.5
    x1 = x.clone()
    out = residual_rms_norm_ref(x1, y, w1, w2, 1e-6)
    want_x = x + rms_norm(y, w1, 1e-6)  # post-norm block: x + norm(mixer(x)), then the next norm
    assert torch.equal(x1, want_x) and out is not None and torch.equal(out, rms_norm(want_x, w2, 1e-6))
    x2 = x.clone()
    assert residual_rms_norm_ref(x2, y, None, None, 1e-6) is None and torch.equal(x2, x + y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wy, wo", [(True, True), (False, True), (True, False)])
def test_residual_rms_norm_triton(device: str, wy: bool, wo: bool) -> None:
    from kernels.triton_decode_fused import residual_rms_norm_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    g = torch.Generator(device).manual_seed(3)
    D = 3840 if device == "cuda" else 48
    x, y = (torch.randn(2, 1, D, generator=g, device=device).to(dtype) for _ in range(2))
    w1, w2 = (torch.rand(D, generator=g, device=device) + 0.5 for _ in range(2))
    xr, xt = x.clone(), x.clone()
    want = residual_rms_norm_ref(xr, y, w1 if wy else None, w2 if wo else None, 1e-6)
    got = residual_rms_norm_triton(xt, y, w1 if wy else None, w2 if wo else None, 1e-6)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(xt.float(), xr.float(), **tol)
    if wo:
        assert got is not None and want is not None
        torch.testing.assert_close(got.float(), want.float(), **tol)
    else:
        assert got is None


@pytest.mark.parametrize("device", DEVICES)
def test_silu_mul_triton(device: str) -> None:
    from kernels.triton_decode_fused import silu_mul_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    gu = torch.randn(2, 1, 2 * 1500, device=device, generator=torch.Generator(device).manual_seed(4)).to(
        dtype
    )
    want = silu_mul_ref(gu)
    torch.testing.assert_close(want, F.silu(gu[..., :1500]) * gu[..., 1500:])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(silu_mul_triton(gu).float(), want.float(), **tol)
