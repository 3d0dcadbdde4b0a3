"""Causal conv1d (full == pieces == step by step == a direct loop) and the norms (== transformers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import KernelInputError, causal_conv1d, causal_conv1d_step, gated_rms_norm, rms_norm


def conv_loop(x, weight, bias, state, activation):
    """y_t = act(bias + sum_i weight[:, i] * xs[t + i]) with xs = state ++ x, in float64."""
    xs = torch.cat([state.double(), x.double().transpose(1, 2)], dim=2)  # (b, d, w-1+t)
    w = weight.shape[1]
    ys = []
    for t in range(x.shape[1]):
        y = (xs[:, :, t : t + w] * weight.double()).sum(-1)
        if bias is not None:
            y = y + bias.double()
        ys.append(F.silu(y) if activation == "silu" else y)
    return torch.stack(ys, 1), xs[:, :, xs.shape[2] - (w - 1) :]


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("t", [1, 3, 10])
@pytest.mark.parametrize("activation", ["silu", None])
def test_conv_full_matches_loop_and_steps(w, t, activation):
    gen = torch.Generator().manual_seed(10 * w + t)
    b, d = 2, 5
    x = torch.randn(b, t, d, generator=gen)
    weight = torch.randn(d, w, generator=gen)
    bias = torch.randn(d, generator=gen)
    s0 = torch.randn(b, d, w - 1, generator=gen)
    y, sf = causal_conv1d(x, weight, bias, initial_state=s0, activation=activation)
    y64, s64 = conv_loop(x, weight, bias, s0, activation)
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sf.double(), s64, atol=0, rtol=0)  # the state is copied inputs
    state = s0.clone()
    ys = [causal_conv1d_step(x[:, i], state, weight, bias, activation=activation) for i in range(t)]
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state, sf, atol=0, rtol=0)


def test_conv_pieces_and_zero_initial_state():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 13, 6, generator=gen)
    weight = torch.randn(6, 4, generator=gen)
    y, sf = causal_conv1d(x, weight)  # no bias, default silu, zero state
    y64, _ = conv_loop(x, weight, None, torch.zeros(1, 6, 3), "silu")
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    y1, s1 = causal_conv1d(x[:, :2], weight)  # shorter than the window
    y2, s2 = causal_conv1d(x[:, 2:], weight, initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s2, sf)
    with pytest.raises(KernelInputError, match="w-1"):
        causal_conv1d(x, weight, initial_state=torch.zeros(1, 6, 4))
    with pytest.raises(KernelInputError, match="activation"):
        causal_conv1d(x, weight, activation="relu")


def test_conv_bf16_keeps_dtype():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 7, 8, generator=gen).bfloat16()
    weight = torch.randn(8, 4, generator=gen).bfloat16()
    y, sf = causal_conv1d(x, weight)
    assert y.dtype == sf.dtype == torch.bfloat16
    y64, _ = conv_loop(x, weight, None, torch.zeros(1, 8, 3), "silu")
    torch.testing.assert_close(y.double(), y64, atol=2e-2, rtol=2e-2)


transformers_models = pytest.importorskip("transformers.models")


def test_norms_match_transformers_fp32():
    from transformers.models.mamba2 import modeling_mamba2
    from transformers.models.mamba2.modeling_mamba2 import Mamba2RMSNorm
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridRMSNormGated
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNormGated

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, generator=gen)
    z = torch.randn(2, 3, 16, generator=gen)
    weight = torch.randn(16, generator=gen)
    with torch.no_grad():
        plain = Mamba2RMSNorm(16, eps=1e-6)
        plain.weight.copy_(weight)
        torch.testing.assert_close(rms_norm(x, weight, 1e-6), plain(x))

        # Mamba-2: gate, then grouped norm (named Mamba2RMSNormGated from transformers 5.25 on)
        gated = getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or modeling_mamba2.MambaRMSNormGated
        mamba = gated(16, group_size=8, eps=1e-5)
        mamba.weight.copy_(weight)
        torch.testing.assert_close(
            gated_rms_norm(x, z, weight, 1e-5, group_size=8, norm_before_gate=False), mamba(x, z)
        )
        torch.testing.assert_close(
            gated_rms_norm(x, None, weight, 1e-5, group_size=8, norm_before_gate=False), mamba(x, None)
        )
        for cls in (OlmoHybridRMSNormGated, Qwen3NextRMSNormGated):  # GDN: norm, then gate (default)
            gdn = cls(16, eps=1e-5)
            gdn.weight.copy_(weight)
            torch.testing.assert_close(gated_rms_norm(x, z, weight, 1e-5), gdn(x, z))


def test_norms_bf16_within_one_rounding_of_fp32():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, generator=gen)
    z = torch.randn(4, 32, generator=gen)
    weight = torch.randn(32, generator=gen)
    for kw in ({}, {"group_size": 8, "norm_before_gate": False}):
        y = gated_rms_norm(x.bfloat16(), z.bfloat16(), weight, 1e-6, **kw)
        y32 = gated_rms_norm(x.bfloat16().float(), z.bfloat16().float(), weight, 1e-6, **kw)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), y32, atol=1e-2, rtol=1e-2)
    with pytest.raises(KernelInputError, match="group_size"):
        gated_rms_norm(x, z, weight, 1e-6, group_size=5)
