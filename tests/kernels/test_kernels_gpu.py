"""Triton kernels vs the torch references at real model shapes, on the GPU (`pytest -m gpu`).

Same tolerances as test_kernels_triton.py (relative norms), plus a long bf16 sequence for each chunked
scan to check that the error does not grow with length.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_ref, causal_conv1d_step_ref
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule_ref
from hybrid_agent.kernels.gated_delta_rule_step import gated_delta_rule_step_ref
from hybrid_agent.kernels.rms_norm import gated_rms_norm_ref
from hybrid_agent.kernels.ssd_scan import ssd_scan_ref
from hybrid_agent.kernels.ssm_step import ssm_step_ref
from hybrid_agent.kernels.testing import make_gdr_inputs, make_ssd_inputs, rel_err

from hybrid_agent import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def _cast(dtype, *ts):
    return [None if a is None else a.to(dtype) for a in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("h", "g", "p", "n"), [(32, 1, 64, 128), (16, 4, 128, 64), (8, 8, 64, 16)])
def test_ssd_scan_gpu(dtype, h, g, p, n):
    x, dt, A, B, C, D, s0 = make_ssd_inputs(2, 1037, h, g, p, n, seed=h + n, with_init=True, device="cuda")
    x, B, C = _cast(dtype, x, B, C)
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0)
    y, s = kernels.ssd_scan(x, dt, A, B, C, D=D, initial_state=s0)
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("h", "dk", "dv", "neg"), [(8, 128, 128, False), (6, 96, 192, True), (4, 64, 32, False)]
)
def test_chunk_gated_delta_rule_gpu(dtype, h, dk, dv, neg):
    q, k, v, g, beta, s0 = make_gdr_inputs(
        2, 1037, h, dk, dv, seed=dk + dv, with_init=True, neg_eig=neg, device="cuda"
    )
    q, k, v = _cast(dtype, q, k, v)
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0)
    o, s = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    assert rel_err(o, o_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[dtype]


def test_long_bf16_sequences_do_not_drift():
    x, dt, A, B, C, D, _ = make_ssd_inputs(1, 16384, 8, 1, 64, 128, seed=1, device="cuda")
    xb, Bb, Cb = _cast(torch.bfloat16, x, B, C)
    y_ref, s_ref = ssd_scan_ref(xb, dt, A, Bb, Cb, D=D)
    y, s = kernels.ssd_scan(xb, dt, A, Bb, Cb, D=D)
    assert rel_err(y, y_ref) < TOL[torch.bfloat16] and rel_err(s, s_ref) < TOL[torch.bfloat16]
    q, k, v, g, beta, _ = make_gdr_inputs(1, 16384, 4, 128, 128, seed=2, device="cuda")
    qb, kb, vb = _cast(torch.bfloat16, q, k, v)
    o_ref, s_ref = chunk_gated_delta_rule_ref(qb, kb, vb, g, beta)
    o, s = kernels.chunk_gated_delta_rule(qb, kb, vb, g, beta)
    assert rel_err(o, o_ref) < TOL[torch.bfloat16] and rel_err(s, s_ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_gpu(dtype):
    x, dt, A, B, C, D, s0 = make_ssd_inputs(4, 1, 128, 8, 64, 128, seed=3, with_init=True, device="cuda")
    x, B, C = _cast(dtype, x, B, C)
    st_ref, st = s0.clone(), s0.clone()
    y_ref = ssm_step_ref(st_ref, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    y = kernels.ssm_step(st, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    assert rel_err(y, y_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-6
    q, k, v, g, beta, s0 = make_gdr_inputs(4, 1, 30, 96, 192, seed=4, with_init=True, device="cuda")
    q, k, v = _cast(dtype, q, k, v)
    st_ref, st = s0.clone(), s0.clone()
    o_ref = gated_delta_rule_step_ref(st_ref, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    o = kernels.gated_delta_rule_step(st, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_and_norm_gpu(dtype):
    gen = torch.Generator().manual_seed(5)
    b, t, d, w = 2, 1037, 4096 + 2 * 128 * 2, 4
    x = torch.randn(b, t, d, generator=gen).to("cuda", dtype)
    weight = torch.randn(d, w, generator=gen).to("cuda", dtype)
    bias = torch.randn(d, generator=gen).to("cuda", dtype)
    s0 = torch.randn(b, d, w - 1, generator=gen).to("cuda", dtype)
    y_ref, s_ref = causal_conv1d_ref(x, weight, bias, initial_state=s0)
    y, s = kernels.causal_conv1d(x, weight, bias, initial_state=s0)
    assert rel_err(y, y_ref) < TOL[dtype] / 10 and torch.equal(s, s_ref)
    st_ref, st = s.clone(), s.clone()
    y1_ref = causal_conv1d_step_ref(x[:, 0], st_ref, weight, bias)
    y1 = kernels.causal_conv1d_step(x[:, 0], st, weight, bias)
    assert rel_err(y1, y1_ref) < TOL[dtype] / 10 and torch.equal(st, st_ref)
    z = torch.randn(b, t, 4096, generator=gen).to("cuda", dtype)
    xn = x[..., :4096].contiguous()
    wn = torch.randn(4096, generator=gen).to("cuda")
    for kw in ({}, {"group_size": 512, "norm_before_gate": False}):
        assert (
            rel_err(kernels.gated_rms_norm(xn, z, wn, 1e-5, **kw), gated_rms_norm_ref(xn, z, wn, 1e-5, **kw))
            < 1e-2
        )
