"""Each Triton kernel against its torch reference at small shapes.

Without a GPU this runs the kernels through Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); on the device it runs them on CUDA. HYBRID_AGENT_KERNELS=triton forces the
public ops onto the Triton path, so these also check the dispatch. Tolerances are relative norms
||out - ref|| / ||ref||: fp32 5e-5 (exact fp32 products on both sides); 16-bit inputs 2e-2 (16-bit
intermediates, one output rounding, tensor-core products on the GPU).
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_ref, causal_conv1d_step_ref
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule_ref
from hybrid_agent.kernels.gated_delta_rule_step import gated_delta_rule_step_ref
from hybrid_agent.kernels.rms_norm import gated_rms_norm_ref, rms_norm_ref
from hybrid_agent.kernels.ssd_scan import ssd_scan_ref
from hybrid_agent.kernels.ssm_step import ssm_step_ref
from hybrid_agent.kernels.testing import make_gdr_inputs, make_ssd_inputs, rel_err

from hybrid_agent import kernels

TOL = {torch.float32: 5e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _cast(dtype, *ts):
    return [None if a is None else a.to(dtype) for a in ts]


@pytest.mark.parametrize(
    ("b", "t", "h", "g", "p", "n", "init", "dtype"),
    [
        (1, 21, 2, 1, 4, 8, False, torch.float32),
        (2, 37, 4, 2, 16, 5, True, torch.float32),
        (1, 40, 2, 2, 8, 16, True, torch.bfloat16),
        (1, 17, 2, 1, 8, 8, False, torch.float16),
    ],
)
def test_ssd_scan_triton(dev, b, t, h, g, p, n, init, dtype):
    x, dt, A, B, C, D, s0 = make_ssd_inputs(b, t, h, g, p, n, seed=t, with_init=init, device=dev)
    x, B, C = _cast(dtype, x, B, C)
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=16)
    y, s = kernels.ssd_scan(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=16)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[torch.float32] * (10 if dtype != torch.float32 else 1)


@pytest.mark.parametrize(
    ("b", "t", "h", "dk", "dv", "init", "neg", "dtype"),
    [
        (1, 20, 2, 4, 4, False, False, torch.float32),
        (2, 77, 2, 8, 12, True, True, torch.float32),
        (1, 70, 1, 16, 24, True, False, torch.bfloat16),
    ],
)
def test_chunk_gated_delta_rule_triton(dev, b, t, h, dk, dv, init, neg, dtype):
    q, k, v, g, beta, s0 = make_gdr_inputs(b, t, h, dk, dv, seed=t, with_init=init, neg_eig=neg, device=dev)
    q, k, v = _cast(dtype, q, k, v)
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0)
    o, s = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    assert o.dtype == dtype and s.dtype == torch.float32
    assert rel_err(o, o_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[dtype]


def test_chunk_gated_delta_rule_triton_identical_keys(dev):
    """Identical keys with beta = 1: where a power-series inverse of I + A would blow up."""
    q, k, v, g, beta, _ = make_gdr_inputs(1, 64, 1, 8, 8, seed=3, device=dev)
    k = k[:, :1].expand_as(k).contiguous()
    beta = torch.ones_like(beta)
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta)
    o, s = kernels.chunk_gated_delta_rule(q, k, v, g, beta)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_triton(dev, dtype):
    x, dt, A, B, C, D, s0 = make_ssd_inputs(2, 1, 4, 2, 8, 16, seed=5, with_init=True, device=dev)
    x, B, C = _cast(dtype, x, B, C)
    st_ref, st = s0.clone(), s0.clone()
    y_ref = ssm_step_ref(st_ref, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    y = kernels.ssm_step(st, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    assert rel_err(y, y_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-6

    q, k, v, g, beta, s0 = make_gdr_inputs(2, 1, 3, 16, 24, seed=6, with_init=True, neg_eig=True, device=dev)
    q, k, v = _cast(dtype, q, k, v)
    st_ref, st = s0.clone(), s0.clone()
    o_ref = gated_delta_rule_step_ref(st_ref, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], scale=0.5)
    o = kernels.gated_delta_rule_step(st, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], scale=0.5)
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-6


@pytest.mark.parametrize(
    ("w", "t", "init", "bias"), [(4, 37, True, True), (2, 3, False, False), (1, 5, True, True)]
)
@pytest.mark.parametrize("activation", ["silu", None])
def test_causal_conv1d_triton(dev, w, t, init, bias, activation):
    gen = torch.Generator().manual_seed(w * 100 + t)
    b, d = 2, 40
    x = torch.randn(b, t, d, generator=gen).to(dev)
    weight = torch.randn(d, w, generator=gen).to(dev)
    bv = torch.randn(d, generator=gen).to(dev) if bias else None
    s0 = torch.randn(b, d, w - 1, generator=gen).to(dev) if init else None
    y_ref, s_ref = causal_conv1d_ref(x, weight, bv, initial_state=s0, activation=activation)
    y, s = kernels.causal_conv1d(x, weight, bv, initial_state=s0, activation=activation)
    assert rel_err(y, y_ref) < 1e-6 and torch.equal(s, s_ref)
    state_ref = s_ref.clone()
    state = s_ref.clone()
    y1_ref = causal_conv1d_step_ref(x[:, -1], state_ref, weight, bv, activation=activation)
    y1 = kernels.causal_conv1d_step(x[:, -1], state, weight, bv, activation=activation)
    assert rel_err(y1, y1_ref) < 1e-6 and torch.equal(state, state_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_triton(dev, dtype):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 48, generator=gen).to(dev, dtype)
    z = torch.randn(3, 5, 48, generator=gen).to(dev, dtype)
    weight = torch.randn(48, generator=gen).to(dev)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(kernels.rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6)) < tol
    for kw in ({}, {"group_size": 16, "norm_before_gate": False}, {"group_size": 12}):
        y = kernels.gated_rms_norm(x, z, weight, 1e-5, **kw)
        assert y.dtype == dtype
        assert rel_err(y, gated_rms_norm_ref(x, z, weight, 1e-5, **kw)) < tol
    y = kernels.gated_rms_norm(x, None, weight, 1e-5, group_size=16, norm_before_gate=False)
    assert rel_err(y, gated_rms_norm_ref(x, None, weight, 1e-5, group_size=16, norm_before_gate=False)) < tol


def test_steps_update_non_contiguous_state_views_in_place(dev):
    """A state that is a view into a bigger buffer (e.g. one layer of a stacked cache) is updated in place."""
    x, dt, A, B, C, D, s0 = make_ssd_inputs(2, 1, 4, 2, 8, 16, seed=8, with_init=True, device=dev)
    buf = torch.zeros(2, 4, 16, 8, device=dev).transpose(2, 3)  # (b, h, p, n) view, not contiguous
    buf.copy_(s0)
    st_ref = s0.clone()
    y_ref = ssm_step_ref(st_ref, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    y = kernels.ssm_step(buf, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    assert rel_err(y, y_ref) < 1e-6 and rel_err(buf, st_ref) < 1e-6

    q, k, v, g, beta, s0 = make_gdr_inputs(1, 1, 2, 16, 8, seed=9, with_init=True, device=dev)
    buf = torch.zeros(1, 2, 8, 16, device=dev).transpose(2, 3)
    buf.copy_(s0)
    st_ref = s0.clone()
    o_ref = gated_delta_rule_step_ref(st_ref, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    o = kernels.gated_delta_rule_step(buf, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    assert rel_err(o, o_ref) < 1e-6 and rel_err(buf, st_ref) < 1e-6

    gen = torch.Generator().manual_seed(10)
    xc = torch.randn(2, 6, generator=gen).to(dev)
    weight = torch.randn(6, 4, generator=gen).to(dev)
    big = torch.randn(2, 6, 5, generator=gen).to(dev)
    state = big[:, :, 1:4]  # (b, d, w-1) view with row stride 5
    st_ref = state.clone()
    y_ref = causal_conv1d_step_ref(xc, st_ref, weight)
    y = kernels.causal_conv1d_step(xc, state, weight)
    assert rel_err(y, y_ref) < 1e-6 and torch.equal(big[:, :, 1:4], st_ref)
