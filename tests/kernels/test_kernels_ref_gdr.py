"""Gated delta rule reference: chunked (fp32, UT transform) == naive float64 recurrence; step == scan."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels import KernelInputError, chunk_gated_delta_rule, gated_delta_rule_step
from hybrid_agent.kernels.gated_delta_rule import chunk_gated_delta_rule_ref
from hybrid_agent.kernels.naive import gated_delta_rule_naive
from hybrid_agent.kernels.testing import make_gdr_inputs as make_gdr
from hypothesis import given, settings
from hypothesis import strategies as st

ATOL, RTOL = 2e-4, 2e-4


def f64(*ts):
    return [None if a is None else a.double() for a in ts]


shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "t": st.integers(1, 40),
        "h": st.integers(1, 3),
        "dk": st.integers(1, 8),
        "dv": st.integers(1, 8),
        "chunk": st.sampled_from([4, 8, 16]),
        "with_init": st.booleans(),
        "neg_eig": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes)
def test_gdr_chunked_matches_naive_float64(s):
    q, k, v, g, beta, s0 = make_gdr(
        s["b"], s["t"], s["h"], s["dk"], s["dv"], s["seed"], with_init=s["with_init"], neg_eig=s["neg_eig"]
    )
    o, sf = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0, chunk_size=s["chunk"])
    o64, s64 = gated_delta_rule_naive(
        *f64(q, k, v, g, beta), initial_state=None if s0 is None else s0.double()
    )
    assert o.dtype == torch.float32 and sf.dtype == torch.float32
    torch.testing.assert_close(o.double(), o64, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(sf.double(), s64, atol=ATOL, rtol=RTOL)


def test_gdr_chunk_size_invariance_split_and_scale():
    q, k, v, g, beta, s0 = make_gdr(2, 75, 2, 16, 12, seed=1, with_init=True)
    o_ref, s_ref = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, scale=0.3)
    for L in (1, 8, 16, 32, 128):
        o, sf = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, scale=0.3, chunk_size=L)
        torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sf, s_ref, atol=1e-5, rtol=1e-5)
    j = 33
    o1, s1 = chunk_gated_delta_rule(
        q[:, :j], k[:, :j], v[:, :j], g[:, :j], beta[:, :j], initial_state=s0, scale=0.3
    )
    o2, s2 = chunk_gated_delta_rule(
        q[:, j:], k[:, j:], v[:, j:], g[:, j:], beta[:, j:], initial_state=s1, scale=0.3
    )
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, s_ref, atol=1e-5, rtol=1e-5)
    # The default scale is dk ** -0.5.
    o_def, _ = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    o_exp, _ = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, scale=16**-0.5)
    torch.testing.assert_close(o_def, o_exp)


def test_gdr_step_equals_chunked_token_by_token():
    q, k, v, g, beta, s0 = make_gdr(2, 11, 3, 8, 6, seed=2, with_init=True, neg_eig=True)
    o_ref, s_ref = chunk_gated_delta_rule_ref(q, k, v, g, beta, initial_state=s0, chunk_size=4)
    state = s0.clone()
    os = [gated_delta_rule_step(state, q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i]) for i in range(11)]
    torch.testing.assert_close(torch.stack(os, 1), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, s_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gdr_low_precision_inputs(dtype):
    q, k, v, g, beta, _ = make_gdr(1, 21, 2, 8, 8, seed=3, dtype=dtype)
    o, sf = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    assert o.dtype == dtype and sf.dtype == torch.float32
    o64, s64 = gated_delta_rule_naive(*f64(q, k, v, g, beta))
    torch.testing.assert_close(o.double(), o64, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(sf.double(), s64, atol=1e-4, rtol=1e-4)


def test_gdr_bad_shapes_say_what_is_wrong():
    q, k, v, g, beta, _ = make_gdr(1, 5, 2, 4, 3, seed=0)
    with pytest.raises(KernelInputError, match="key-first"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(1, 2, 3, 4))
    with pytest.raises(KernelInputError, match="fp32"):
        gated_delta_rule_step(
            torch.zeros(1, 2, 4, 3, dtype=torch.float16), q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0]
        )


def test_gdr_matches_transformers_torch_reference():
    """Same conventions as transformers' OLMo Hybrid / Qwen3-Next torch path (scale dk**-0.5, key-first)."""
    mod = pytest.importorskip("transformers.models.olmo_hybrid.modeling_olmo_hybrid")
    q, k, v, g, beta, s0 = make_gdr(1, 19, 2, 8, 4, seed=5, with_init=True)
    o, sf = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, chunk_size=8)
    o_hf, s_hf = mod.torch_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=s0, output_final_state=True
    )
    torch.testing.assert_close(o, o_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sf, s_hf, atol=1e-5, rtol=1e-5)
