"""The KDA Triton kernels (kernels/triton_kda.py, kernels/triton_kda_step.py) against the torch
reference and the float64 token-by-token recurrence, at small shapes.

Without a GPU these run through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
on the device they run on CUDA. The `dev` fixture forces the public ops onto the Triton path, so the
dispatch is checked too. Tolerances are relative norms as in test_kernels_triton.py.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.kda import chunk_kda_ref
from hybrid_agent.kernels.kda_step import kda_step_ref
from hybrid_agent.kernels.naive import gated_delta_rule_naive
from hybrid_agent.kernels.testing import make_kda_inputs, rel_err

from hybrid_agent import kernels

TOL = {torch.float32: 5e-5, torch.bfloat16: 2e-2}


def naive64(q, k, v, g, beta, s0):
    return gated_delta_rule_naive(
        q.double(), k.double(), v.double(), g.double(), beta.double(),
        initial_state=None if s0 is None else s0.double(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("b", "t", "h", "dk", "dv", "init", "strong", "dtype"),
    [
        (1, 20, 2, 4, 4, False, False, torch.float32),  # one chunk, its tail padded
        (1, 70, 1, 8, 12, True, True, torch.float32),  # two chunks, decays down to exp(-20) a token
        (2, 67, 1, 16, 8, True, False, torch.float32),  # batch 2, a 3-token second chunk
        (1, 70, 1, 16, 24, True, False, torch.bfloat16),
    ],
)
def test_chunk_kda_triton(dev, b, t, h, dk, dv, init, strong, dtype):
    q, k, v, g, beta, s0 = make_kda_inputs(
        b, t, h, dk, dv, seed=t + dk, dtype=dtype, with_init=init, strong=strong, device=dev
    )
    o_ref, s_ref = chunk_kda_ref(q, k, v, g, beta, initial_state=s0)
    o, s = kernels.chunk_kda(q, k, v, g, beta, initial_state=s0)
    assert o.dtype == dtype and s.dtype == torch.float32 and o.device == q.device
    assert rel_err(o, o_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[dtype]
    o64, s64 = naive64(q, k, v, g, beta, s0)
    assert rel_err(o, o64) < TOL[dtype]
    assert rel_err(s, s64) < TOL[dtype]


def test_chunk_kda_triton_state_in_and_out(dev):
    """A sequence in two calls (the first ends mid-chunk), the state carried from one to the next, is
    the sequence in one call; and the scale argument is honoured."""
    q, k, v, g, beta, s0 = make_kda_inputs(1, 90, 1, 8, 8, seed=4, with_init=True, device=dev)
    o_all, s_all = kernels.chunk_kda(q, k, v, g, beta, initial_state=s0, scale=0.3)
    o64, s64 = naive64(q, k, v, g, beta, s0)
    assert (
        rel_err(o_all, 0.3 / 8**-0.5 * o64) < TOL[torch.float32] and rel_err(s_all, s64) < TOL[torch.float32]
    )
    j = 37
    o1, s1 = kernels.chunk_kda(
        q[:, :j], k[:, :j], v[:, :j], g[:, :j], beta[:, :j], initial_state=s0, scale=0.3
    )
    o2, s2 = kernels.chunk_kda(
        q[:, j:], k[:, j:], v[:, j:], g[:, j:], beta[:, j:], initial_state=s1, scale=0.3
    )
    assert rel_err(torch.cat([o1, o2], 1), o_all) < 1e-5 and rel_err(s2, s_all) < 1e-5


def test_chunk_kda_triton_identical_keys(dev):
    """Identical keys with beta = 1 and a weak decay: I + A is as ill-conditioned as it gets."""
    q, k, v, g, beta, _ = make_kda_inputs(1, 64, 1, 8, 8, seed=3, device=dev)
    k = k[:, :1].expand_as(k).contiguous()
    beta = torch.ones_like(beta)
    g = g * 0.01
    o_ref, s_ref = chunk_kda_ref(q, k, v, g, beta)
    o, s = kernels.chunk_kda(q, k, v, g, beta)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kda_step_triton(dev, dtype):
    q, k, v, g, beta, s0 = make_kda_inputs(2, 1, 3, 16, 24, seed=6, dtype=dtype, with_init=True, device=dev)
    st_ref, st = s0.clone(), s0.clone()
    o_ref = kda_step_ref(st_ref, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], scale=0.5)
    o = kernels.kda_step(st, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], scale=0.5)
    assert o.dtype == dtype
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(st, st_ref) < 1e-6


def test_kda_steps_equal_chunked_and_float64(dev):
    """Token by token through the Triton step == the Triton chunked op == the float64 recurrence, from
    a carried state; the state a view into a bigger buffer is updated in place."""
    q, k, v, g, beta, s0 = make_kda_inputs(1, 9, 2, 8, 6, seed=7, with_init=True, strong=True, device=dev)
    o_c, s_c = kernels.chunk_kda(q, k, v, g, beta, initial_state=s0)
    buf = torch.zeros(1, 2, 6, 8, device=dev).transpose(2, 3)  # (b, h, dk, dv) view, not contiguous
    buf.copy_(s0)
    o_s = torch.stack(
        [kernels.kda_step(buf, q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i]) for i in range(9)], 1
    )
    o64, s64 = naive64(q, k, v, g, beta, s0)
    assert rel_err(o_s, o_c) < 1e-5 and rel_err(buf, s_c) < 1e-5
    assert rel_err(o_s, o64) < 1e-5 and rel_err(buf, s64) < 1e-5


def test_chunk_kda_triton_k_lo_keeps_the_state_closer(dev):
    """`k_lo` (the decayed k operands as 16-bit hi + lo pairs) on bf16 inputs: the final state ~100x
    closer to the fp32 reference than with one 16-bit operand (the interpreter's products are exact,
    so only the operands' rounding shows), the output as close as the default's."""
    from hybrid_agent.kernels.triton_kda import KdaLaunch, chunk_kda_triton

    q, k, v, g, beta, s0 = make_kda_inputs(
        1, 70, 1, 16, 16, seed=8, dtype=torch.bfloat16, with_init=True, device=dev
    )
    o_ref, s_ref = chunk_kda_ref(q.float(), k.float(), v.float(), g, beta, initial_state=s0)
    o0, s0_out = chunk_kda_triton(q, k, v, g, beta, initial_state=s0)
    o1, s1 = chunk_kda_triton(q, k, v, g, beta, initial_state=s0, config=KdaLaunch(k_lo=1, fu_stages=1))
    assert rel_err(o1, o_ref) < TOL[torch.bfloat16] and rel_err(o0, o_ref) < TOL[torch.bfloat16]
    assert rel_err(s1, s_ref) < 2e-4 < rel_err(s0_out, s_ref)


def test_chunk_kda_triton_dv_block_by_grid(dev):
    """`fu_bv` 0 picks the dv-block by the GDN launch's rule (triton_gdr_prepare.py's `fused_bv`: 32
    while the grid fits one wave of SMs, else 64, at most dv's power of two); at dv 48 that is two
    blocks of 32, the second one partial, and the result matches the reference."""
    from hybrid_agent.kernels.triton_gdr_prepare import fused_bv
    from hybrid_agent.kernels.triton_kda import KdaLaunch, chunk_kda_triton

    cpu = torch.device("cpu")  # off the GPU the rule assumes an H100's 132 SMs
    assert fused_bv(128, 33, cpu) == 32 and fused_bv(128, 34, cpu) == 64 and fused_bv(48, 200, cpu) == 64
    assert fused_bv(16, 200, cpu) == 16
    q, k, v, g, beta, s0 = make_kda_inputs(1, 70, 2, 16, 48, seed=9, with_init=True, device=dev)
    o_ref, s_ref = chunk_kda_ref(q, k, v, g, beta, initial_state=s0)
    o, s = chunk_kda_triton(q, k, v, g, beta, initial_state=s0, config=KdaLaunch(fu_bv=0))
    assert rel_err(o, o_ref) < TOL[torch.float32] and rel_err(s, s_ref) < TOL[torch.float32]
