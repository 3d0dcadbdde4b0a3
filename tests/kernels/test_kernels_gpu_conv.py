"""The causal conv kernels with activation=None (LFM2's gated short convolution, model/short_conv.py) on
the GPU (`pytest -m gpu`), at LFM2-1.2B's width (2048 channels, width 3) and with Kimi Linear's q|k|v
conv width (4), full sequence and one-token step, against the torch references. The model carries the
conv window in fp32 and feeds it in the input's dtype to the full kernel, as here."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_ref, causal_conv1d_step_ref
from hybrid_agent.kernels.testing import rel_err

from hybrid_agent import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("d", "w", "bias"), [(2048, 3, False), (2048, 3, True), (3 * 4096, 4, False)])
def test_conv_without_activation_gpu(dtype, d, w, bias):
    gen = torch.Generator().manual_seed(d + w)
    b, t = 2, 1037
    x = torch.randn(b, t, d, generator=gen).to("cuda", dtype)
    weight = torch.randn(d, w, generator=gen).to("cuda", dtype)
    bv = torch.randn(d, generator=gen).to("cuda", dtype) if bias else None
    s0 = torch.randn(b, d, w - 1, generator=gen).to("cuda")  # fp32, as the model's state
    y_ref, s_ref = causal_conv1d_ref(x, weight, bv, initial_state=s0.to(dtype), activation=None)
    y, s = kernels.causal_conv1d(x, weight, bv, initial_state=s0.to(dtype), activation=None)
    assert rel_err(y, y_ref) < (1e-6 if dtype == torch.float32 else 1e-2) and torch.equal(s, s_ref)
    st_ref, st = s.float().clone(), s.float().clone()
    for i in range(3):  # steps on the fp32 window, as the decode engine runs them
        y1_ref = causal_conv1d_step_ref(x[:, i], st_ref, weight, bv, activation=None)
        y1 = kernels.causal_conv1d_step(x[:, i], st, weight, bv, activation=None)
        assert rel_err(y1, y1_ref) < (1e-6 if dtype == torch.float32 else 1e-2) and torch.equal(st, st_ref)
