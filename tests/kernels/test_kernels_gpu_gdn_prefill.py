"""Gated DeltaNet's prefill-chunk kernels on the GPU (`pytest -m gpu`) at OLMo Hybrid 7B's shape (30 heads,
dk 96, dv 192, d_model 3840): the gates (kernels.gdn_gates) from a and b read as column blocks of the
stacked q|k|v|a|b|g projection, the L2 norm of q and k (kernels.l2_norm), the conv reading q|k|v in
place, and a whole layer on the engine's stacked weights against the path of one matmul per projection
and torch's gates and L2 norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels.causal_conv1d import causal_conv1d_ref
from hybrid_agent.kernels.gdn_gates import gdn_gates_ref
from hybrid_agent.kernels.testing import rel_err

from hybrid_agent import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

H, DK, DV, D = 30, 96, 192, 3840
C = 2 * H * DK + H * DV  # the conv's q|k|v channels
N = C + 2 * H + H * DV  # q|k|v|a|b|g: 17,340 columns


def _proj(T: int, seed: int) -> torch.Tensor:
    """A (1, T, N) bf16 projection output in a buffer of rows padded to 17,344, as `project_stacked`'s."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(1, T, N + 4, generator=gen).mul(4).to("cuda", torch.bfloat16)
    return buf[..., :N]


@pytest.mark.parametrize("neg", [False, True])
def test_gdn_gates_gpu(neg):
    """Against float64: within a few fp32 ulps of it, as torch's fp32 arithmetic is (Triton's exp and log
    are its own approximations, so bit equality with torch is not asked)."""
    proj = _proj(8192, seed=1)
    a, b = proj[..., C : C + H], proj[..., C + H : C + 2 * H]  # token stride 17,344
    gen = torch.Generator().manual_seed(2)
    A_log = (torch.rand(H, generator=gen) * 2.77).cuda()  # exp(A_log) in [1, 16), OLMo's init range
    dt_bias = torch.randn(H, generator=gen).cuda()
    g, beta = kernels.gdn_gates(a, b, A_log, dt_bias, allow_neg_eigval=neg)
    g_t, beta_t = gdn_gates_ref(a, b, A_log, dt_bias, allow_neg_eigval=neg)
    g64 = -A_log.double().exp() * F.softplus(a.double() + dt_bias.double())
    beta64 = torch.sigmoid(b.double()) * (2.0 if neg else 1.0)
    for got, torch_fp32, ref in ((g, g_t, g64), (beta, beta_t, beta64)):
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == (1, 8192, H)
        err = ((got.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
        err_t = ((torch_fp32.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
        assert err <= max(2 * err_t, 4e-6), (err, err_t)


def test_l2_norm_gpu():
    """q and k as heads of the conv's q|k|v output (1, 8192, 11,520): the kernel's bf16 outputs no further
    from float64 than torch's, and rarely other than torch's (its factor may differ by an ulp)."""
    from hybrid_agent.kernels.l2_norm import l2_norm_ref

    qkv = _proj(8192, seed=8)[..., :C].contiguous()
    for x in (
        qkv[..., : H * DK].reshape(1, 8192, H, DK),
        qkv[..., H * DK : 2 * H * DK].reshape(1, 8192, H, DK),
    ):
        got, want = kernels.l2_norm(x), l2_norm_ref(x)
        x64 = x.double()
        ref = x64 / torch.sqrt((x64 * x64).sum(-1, keepdim=True) + 1e-6)
        e_new, e_old = (got.double() - ref).abs(), (want.double() - ref).abs()
        assert e_new.max() <= 1.05 * e_old.max() and e_new.mean() <= 1.01 * e_old.mean()
        assert (got != want).float().mean() < 0.01 and got.is_contiguous()


def test_conv_reads_qkv_in_place_gpu():
    proj = _proj(2048, seed=3)
    x = proj[..., :C]  # (1, T, 11,520) at token stride 17,344
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(C, 4, generator=gen).to("cuda", torch.bfloat16)
    s0 = torch.randn(1, C, 3, generator=gen).to("cuda", torch.bfloat16)
    y, s = kernels.causal_conv1d(x, w, None, initial_state=s0)
    y_p, s_p = kernels.causal_conv1d(x.contiguous(), w, None, initial_state=s0)
    assert torch.equal(y, y_p) and torch.equal(s, s_p) and y.is_contiguous()
    y_ref, s_ref = causal_conv1d_ref(x, w, None, initial_state=s0)
    assert rel_err(y, y_ref) < 1e-2 and torch.equal(s, s_ref)


def test_gdn_layer_on_stacked_weights_gpu(monkeypatch):
    """One layer's prefill chunk (2,048 tokens, carried states) on the engine's stacked weights (one
    matmul, the gates' kernel, the gate read in place by the norm) against one matmul per projection
    and torch's gates: the same output and states to bf16 rounding."""
    from hybrid_agent.model.decode.ops import plan_concat
    from hybrid_agent.model.ops import Ops, project_cols, stacked_weights
    from hybrid_agent.model.testing import tiny_model

    gdn = {"n_heads": H, "n_v_heads": H, "head_k_dim": DK, "head_v_dim": DV, "allow_neg_eigval": True}
    model = tiny_model(["gated_deltanet"], seed=5, d_model=D, gated_deltanet=gdn, init_std=0.02)
    model = model.to("cuda", torch.bfloat16)
    mixer = model.layers[0].mixer
    x = torch.randn(1, 2048, D, generator=torch.Generator().manual_seed(6)).to("cuda", torch.bfloat16)

    def run(ops: Ops):
        state = model.new_state(1)
        layer = state.layers[0]
        layer.recurrent["conv"].normal_()
        layer.recurrent["recurrent"].normal_().mul_(0.1)
        with torch.no_grad():
            out = mixer(x, layer, state, ops)
        return out, layer.recurrent["conv"], layer.recurrent["recurrent"]

    class Separate(Ops):  # one matmul per projection, torch's gates
        def project(self, role, x, linears):
            return project_cols(x, linears) if len(linears) > 1 else super().project(role, x, linears)

    torch.manual_seed(7)
    want = run(Separate())
    import hybrid_agent.model.gated_deltanet as gd
    from hybrid_agent.kernels.l2_norm import l2_norm_ref

    with monkeypatch.context() as m:  # torch's gates and L2 norm, as before the kernels
        m.setattr(gd, "gdn_gates", gdn_gates_ref)
        m.setattr(gd, "l2_norm", l2_norm_ref)
        torch.manual_seed(7)
        want_torch = run(Separate())
    plan_concat(model, share=True, align=16)
    assert stacked_weights(mixer.in_projs) is not None
    torch.manual_seed(7)
    got = run(Ops())
    for a, b, c in zip(got, want, want_torch, strict=True):
        assert rel_err(a, b) < 1e-2 and rel_err(a, c) < 1e-2 and rel_err(b, c) < 1e-2
