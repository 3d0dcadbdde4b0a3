"""SSD reference: chunked (fp32) == naive float64 sequential recurrence; step == one-token scan."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels import KernelInputError, ssd_scan, ssm_step
from hybrid_agent.kernels.naive import ssd_naive
from hybrid_agent.kernels.ssd_scan import ssd_scan_ref
from hybrid_agent.kernels.ssm_step import ssm_step_ref
from hybrid_agent.kernels.testing import make_ssd_inputs as make_ssd
from hypothesis import given, settings
from hypothesis import strategies as st

# fp32 chunked vs float64 sequential on O(1) values: the error is a few ulps times the chunk length.
ATOL, RTOL = 2e-4, 2e-4


def f64(*ts):
    return [None if a is None else a.double() for a in ts]


shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "t": st.integers(1, 40),
        "hg": st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (6, 3)]),
        "p": st.integers(1, 6),
        "n": st.integers(1, 6),
        "chunk": st.sampled_from([4, 8, 16]),
        "with_init": st.booleans(),
        "with_D": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes)
def test_ssd_chunked_matches_naive_float64(s):
    h, g = s["hg"]
    x, dt, A, B, C, D, s0 = make_ssd(
        s["b"], s["t"], h, g, s["p"], s["n"], s["seed"], with_D=s["with_D"], with_init=s["with_init"]
    )
    y, sf = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=s["chunk"])
    y64, sf64 = ssd_naive(*f64(x, dt, A, B, C, D, s0))
    assert y.dtype == torch.float32 and sf.dtype == torch.float32
    torch.testing.assert_close(y.double(), y64, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(sf.double(), sf64, atol=ATOL, rtol=RTOL)


def test_ssd_chunk_size_invariance_and_split():
    x, dt, A, B, C, D, s0 = make_ssd(2, 77, 4, 2, 8, 5, seed=1, with_init=True)
    y_ref, s_ref = ssd_scan(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=64)
    for L in (1, 8, 16, 32, 128):
        y, sf = ssd_scan(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=L)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sf, s_ref, atol=1e-5, rtol=1e-5)
    # Two calls joined by the state == one call.
    k = 30
    y1, s1 = ssd_scan(x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], D=D, initial_state=s0)
    y2, s2 = ssd_scan(x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], D=D, initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, s_ref, atol=1e-5, rtol=1e-5)


def test_ssm_step_equals_scan_token_by_token():
    x, dt, A, B, C, D, s0 = make_ssd(2, 9, 4, 2, 8, 5, seed=2, with_init=True)
    y_scan, s_scan = ssd_scan_ref(x, dt, A, B, C, D=D, initial_state=s0, chunk_size=4)
    state = s0.clone()
    ys = []
    for i in range(x.shape[1]):
        ys.append(ssm_step(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D=D))
    torch.testing.assert_close(torch.stack(ys, 1), y_scan, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, s_scan, atol=1e-5, rtol=1e-5)
    # One token through the chunked scan from the same state agrees with the step.
    st1 = s0.clone()
    y_step = ssm_step_ref(st1, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=D)
    y_one, s_one = ssd_scan_ref(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], D=D, initial_state=s0)
    torch.testing.assert_close(y_step, y_one[:, 0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(st1, s_one, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ssd_low_precision_inputs_keep_dtype_and_fp32_state(dtype):
    x, dt, A, B, C, D, _ = make_ssd(1, 20, 2, 1, 4, 4, seed=3, dtype=dtype)
    y, sf = ssd_scan(x, dt, A, B, C, D=D, chunk_size=8)
    assert y.dtype == dtype and sf.dtype == torch.float32
    y64, s64 = ssd_naive(*f64(x, dt, A, B, C, D, None))
    torch.testing.assert_close(y.double(), y64, atol=3e-2, rtol=3e-2)  # one output rounding
    torch.testing.assert_close(sf.double(), s64, atol=1e-4, rtol=1e-4)  # state never rounded


def test_ssd_bad_shapes_say_what_is_wrong():
    x, dt, A, B, C, _, _ = make_ssd(1, 5, 3, 1, 4, 4, seed=0)
    with pytest.raises(KernelInputError, match="groups"):
        ssd_scan(x, dt, A, B.expand(1, 5, 2, 4), C.expand(1, 5, 2, 4))
    with pytest.raises(KernelInputError, match="initial_state"):
        ssd_scan(x, dt, A, B, C, initial_state=torch.zeros(1, 3, 4, 5))
    with pytest.raises(KernelInputError, match="fp32"):
        ssm_step(torch.zeros(1, 3, 4, 4, dtype=torch.bfloat16), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
