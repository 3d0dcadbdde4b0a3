"""KDA reference (the delta rule with a decay per key channel): chunked (fp32) == naive float64
recurrence; the one-token step == the chunked form; a decay shared by all channels is the scalar gated
delta rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import (
    KernelInputError,
    chunk_gated_delta_rule,
    chunk_kda,
    gated_delta_rule_step,
    kda_step,
)
from hybrid_agent.kernels.kda import chunk_kda_ref
from hybrid_agent.kernels.naive import gated_delta_rule_naive
from hypothesis import given, settings
from hypothesis import strategies as st

ATOL, RTOL = 2e-4, 2e-4


def make_kda(b, t, h, dk, dv, seed, *, with_init=False, strong=False):
    """q, k (L2-normalised), v, g (b,t,h,dk) log-decay <= 0 per channel, beta in (0,1), initial state.
    `strong`: decays down to exp(-20) a token on some channels (the chunk's cumulative sums reach -1000s)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q = F.normalize(rnd(b, t, h, dk), dim=-1)
    k = F.normalize(rnd(b, t, h, dk), dim=-1)
    v = rnd(b, t, h, dv)
    g = -F.softplus(rnd(b, t, h, dk)) * (10.0 if strong else 0.5)
    beta = torch.sigmoid(rnd(b, t, h))
    s0 = rnd(b, h, dk, dv) * 0.5 if with_init else None
    return q, k, v, g, beta, s0


shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "t": st.integers(1, 40),
        "h": st.integers(1, 3),
        "dk": st.integers(1, 8),
        "dv": st.integers(1, 8),
        "chunk": st.sampled_from([4, 8, 16]),
        "with_init": st.booleans(),
        "strong": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shapes)
def test_kda_chunked_matches_naive_float64(s):
    q, k, v, g, beta, s0 = make_kda(
        s["b"], s["t"], s["h"], s["dk"], s["dv"], s["seed"], with_init=s["with_init"], strong=s["strong"]
    )
    o, sf = chunk_kda_ref(q, k, v, g, beta, initial_state=s0, chunk_size=s["chunk"])
    o64, s64 = gated_delta_rule_naive(
        q.double(), k.double(), v.double(), g.double(), beta.double(),
        initial_state=None if s0 is None else s0.double(),
    )  # fmt: skip
    assert o.dtype == torch.float32 and sf.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(sf).all()
    torch.testing.assert_close(o.double(), o64, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(sf.double(), s64, atol=ATOL, rtol=RTOL)


def test_kda_chunk_size_invariance_split_and_scale():
    q, k, v, g, beta, s0 = make_kda(2, 75, 2, 16, 12, seed=1, with_init=True)
    o_ref, s_ref = chunk_kda(q, k, v, g, beta, initial_state=s0, scale=0.3)
    for L in (1, 8, 32, 128):
        o, sf = chunk_kda(q, k, v, g, beta, initial_state=s0, scale=0.3, chunk_size=L)
        torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sf, s_ref, atol=1e-5, rtol=1e-5)
    j = 33
    o1, s1 = chunk_kda(q[:, :j], k[:, :j], v[:, :j], g[:, :j], beta[:, :j], initial_state=s0, scale=0.3)
    o2, s2 = chunk_kda(q[:, j:], k[:, j:], v[:, j:], g[:, j:], beta[:, j:], initial_state=s1, scale=0.3)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, s_ref, atol=1e-5, rtol=1e-5)


def test_kda_step_equals_chunked_token_by_token():
    q, k, v, g, beta, s0 = make_kda(2, 11, 3, 8, 6, seed=2, with_init=True)
    o_ref, s_ref = chunk_kda_ref(q, k, v, g, beta, initial_state=s0, chunk_size=4)
    state = s0.clone()
    os = [kda_step(state, q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i]) for i in range(11)]
    torch.testing.assert_close(torch.stack(os, 1), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, s_ref, atol=1e-5, rtol=1e-5)


def test_kda_with_one_decay_for_all_channels_is_the_gated_delta_rule():
    q, k, v, g, beta, s0 = make_kda(1, 30, 2, 8, 4, seed=3, with_init=True)
    g_head = g[..., 0]  # (b, t, h)
    o, sf = chunk_kda(q, k, v, g_head[..., None].expand_as(g), beta, initial_state=s0, chunk_size=8)
    o_gdr, s_gdr = chunk_gated_delta_rule(q, k, v, g_head, beta, initial_state=s0, chunk_size=8)
    torch.testing.assert_close(o, o_gdr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sf, s_gdr, atol=1e-5, rtol=1e-5)


def test_kda_rejects_a_per_head_decay():
    q, k, v, g, beta, s0 = make_kda(1, 4, 2, 8, 4, seed=0, with_init=True)
    with pytest.raises(KernelInputError, match="q, k and g"):
        chunk_kda(q, k, v, g[..., 0], beta, initial_state=s0)
    with pytest.raises(KernelInputError, match="q, k and g"):
        kda_step(s0.clone(), q[:, 0], k[:, 0], v[:, 0], g[:, 0, :, 0], beta[:, 0])


@pytest.mark.parametrize("per_channel", [False, True], ids=["gdn", "kda"])
def test_delta_rule_checks_name_the_wrong_operand(per_channel):
    """One check serves both decay shapes (kernels/checks.py): each wrong operand of the chunked op and
    of the step is named in a one-line error with the shape it must have."""
    q, k, v, g, beta, s0 = make_kda(1, 4, 2, 8, 4, seed=0, with_init=True)
    g = g if per_channel else g[..., 0]
    chunk = chunk_kda if per_channel else chunk_gated_delta_rule
    step = kda_step if per_channel else gated_delta_rule_step
    keyed = "q, k and g" if per_channel else "q and k"
    gated = "beta" if per_channel else "g and beta"
    args = dict(q=q, k=k, v=v, g=g, beta=beta)
    bad = [
        ("k", k[..., :4], rf"{keyed} must all be \(b, t, h, dk\)"),
        ("v", v[:, :3], r"v must be \(b, t, h, dv\) with \(b, t, h\) = \(1, 4, 2\)"),
        ("beta", beta[:, :3], rf"{gated} must be \(b, t, h\) = \(1, 4, 2\)"),
        ("g", g[:, :3], rf"{keyed} must all be" if per_channel else rf"{gated} must be \(b, t, h\)"),
    ]
    for name, value, msg in bad:
        with pytest.raises(KernelInputError, match=msg) as err:
            chunk(**{**args, name: value}, initial_state=s0)
        assert "\n" not in str(err.value)
    with pytest.raises(KernelInputError, match="initial_state must be key-first"):
        chunk(**args, initial_state=s0[..., :2])
    one = {n: a[:, 0] for n, a in args.items()}
    for name, value, msg in [
        ("k", one["k"][..., :4], rf"{keyed} must be \(b, h, dk\) and v \(b, h, dv\)"),
        ("beta", one["beta"][:, :1], rf"{gated} must be \(b, h\) = \(1, 2\)"),
    ]:
        with pytest.raises(KernelInputError, match=msg):
            step(s0.clone(), **{**one, name: value})
    with pytest.raises(KernelInputError, match=r"state must be fp32"):
        step(s0.double(), **one)
