"""The KDA Triton kernels at Kimi-Linear-48B-A3B's shape (32 heads, head_dim 128 for q, k and v), on
the GPU (`pytest -m gpu`): chunked against the fp32 reference and the float64 recurrence, chunked
against token-by-token steps, and a long bf16 sequence to check that the error does not grow with length.

Tolerances are relative norms as in test_kernels_gpu.py. For bf16 inputs the decayed q and k are
rounded to bf16 (fla's precision class; kernels/triton_kda.py), so the bf16 bounds are those of the
GDN kernels, 2e-2.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.kda import chunk_kda_ref
from hybrid_agent.kernels.kda_step import kda_step_ref
from hybrid_agent.kernels.naive import gated_delta_rule_naive
from hybrid_agent.kernels.testing import make_kda_inputs, rel_err

from hybrid_agent import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
H, D = 32, 128  # Kimi-Linear-48B-A3B's KDA heads


def _f32(*ts):
    return [t.float() for t in ts]


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_kda_gpu(dtype, strong):
    """Two sequences, 1037 tokens (a 13-token tail chunk), an initial state: against the fp32
    reference on the same (rounded) inputs and the float64 recurrence."""
    q, k, v, g, beta, s0 = make_kda_inputs(
        2, 1037, H, D, D, seed=11, dtype=dtype, with_init=True, strong=strong, device="cuda"
    )
    o, s = kernels.chunk_kda(q, k, v, g, beta, initial_state=s0)
    assert o.dtype == dtype and s.dtype == torch.float32
    qf, kf, vf = _f32(q, k, v)
    o_ref, s_ref = chunk_kda_ref(qf, kf, vf, g, beta, initial_state=s0)
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(s, s_ref) < TOL[dtype]
    o64, s64 = gated_delta_rule_naive(
        qf[:1].double(), kf[:1].double(), vf[:1].double(), g[:1].double(), beta[:1].double(),
        initial_state=s0[:1].double(),
    )  # fmt: skip
    assert rel_err(o[:1], o64) < TOL[dtype] and rel_err(s[:1], s64) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kda_chunked_then_steps_equal_one_chunked_call_gpu(dtype):
    """A 300-token prefill then 40 Triton steps == one chunked call over all 340 tokens; each step ==
    the torch step on the same state."""
    q, k, v, g, beta, s0 = make_kda_inputs(
        1, 340, H, D, D, seed=12, dtype=dtype, with_init=True, device="cuda"
    )
    o_all, s_all = kernels.chunk_kda(q, k, v, g, beta, initial_state=s0)
    o_pre, state = kernels.chunk_kda(
        q[:, :300], k[:, :300], v[:, :300], g[:, :300], beta[:, :300], initial_state=s0
    )
    outs = []
    for i in range(300, 340):
        ref_state = state.clone()
        o_ref = kda_step_ref(ref_state, q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i])
        outs.append(kernels.kda_step(state, q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i]))
        assert rel_err(outs[-1], o_ref) < TOL[dtype] and rel_err(state, ref_state) < 1e-5
    o = torch.cat([o_pre, torch.stack(outs, 1)], 1)
    assert rel_err(o, o_all) < TOL[dtype] and rel_err(state, s_all) < TOL[dtype]


def test_kda_long_bf16_does_not_drift_gpu():
    q, k, v, g, beta, _ = make_kda_inputs(1, 8192, H, D, D, seed=13, dtype=torch.bfloat16, device="cuda")
    o, s = kernels.chunk_kda(q, k, v, g, beta)
    o_ref, s_ref = chunk_kda_ref(*_f32(q, k, v), g, beta)
    assert rel_err(o, o_ref) < TOL[torch.bfloat16] and rel_err(s, s_ref) < TOL[torch.bfloat16]


def test_kda_step_gpu_batch():
    """The decode step at batch 8 and both dtypes against the torch step."""
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v, g, beta, s0 = make_kda_inputs(
            8, 1, H, D, D, seed=14, dtype=dtype, with_init=True, device="cuda"
        )
        st_ref, st = s0.clone(), s0.clone()
        o_ref = kda_step_ref(st_ref, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
        o = kernels.kda_step(st, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
        assert rel_err(o, o_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-6
