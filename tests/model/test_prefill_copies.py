"""The prefill path without its avoidable copies and passes gives the numbers of the path it replaced, bit
for bit: the projections written into column blocks of one output (model/ops.py `project_cols`), the
conv's final state read from the last inputs only (kernels/triton_causal_conv1d.py `last_inputs`), the
L2 norm's last product rounded straight into the input dtype, RoPE by halves (model/rope.py), QK-norm on
a column block without a packed copy (kernels/triton_rms_norm.py). The replaced code is kept here, as it
was, for the comparison; each removed op is checked gone with torch.profiler's op names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import causal_conv1d, chunk_gated_delta_rule
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.kernels.gdn_gates import gdn_gates_ref
from hybrid_agent.kernels.l2_norm import l2_norm_ref
from hybrid_agent.model import gated_deltanet
from hybrid_agent.model.attention import Attention
from hybrid_agent.model.gated_deltanet import GatedDeltaNet, l2_normalize
from hybrid_agent.model.ops import Ops, project_cols
from hybrid_agent.model.rope import rope_cos_sin, rope_inv_freq, rotate
from hybrid_agent.model.testing import run_in_pieces, tiny_model
from torch import nn
from torch.profiler import profile

# ---- the replaced code, as it was ------------------------------------------------------------------


def old_l2_normalize(x, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def old_rotate(x, cos, sin):
    R = cos.shape[-1]
    xf = x if x.dtype == torch.float32 else x.float()
    xr, rest = xf[..., :R], xf[..., R:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    out = xr * cos + rotated * sin
    if rest.shape[-1]:
        out = torch.cat((out, rest), dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def old_project(self, role, x, linears):
    if len(linears) == 1:
        return F.linear(x, linears[0].weight, linears[0].bias)
    return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], dim=-1)


def old_conv_final(x, initial_state, w):
    b, t, d = x.shape
    prev = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros((b, d, w - 1))
    return torch.cat([prev, x.transpose(1, 2)], dim=2)[:, :, t:].contiguous()


def old_gdn_prefill(self, x, layer, state, ops=None):
    """GatedDeltaNet.forward's T > 1 branch as it was."""
    ops = ops or Ops()
    B, T, _ = x.shape
    assert T > 1
    Hv, Dv = self.n_v_heads, self.head_v_dim
    weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
    conv = layer.recurrent["conv"]
    qkv = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)
    qkv, final = causal_conv1d(qkv, weight, bias, initial_state=conv.to(qkv.dtype))
    layer.recurrent["conv"] = final.float()
    q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
    q = old_l2_normalize(q.reshape(B, T, self.n_heads, self.head_k_dim))
    k = old_l2_normalize(k.reshape(B, T, self.n_heads, self.head_k_dim))
    v = v.reshape(B, T, Hv, Dv)
    if Hv != self.n_heads:
        r = Hv // self.n_heads
        q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)
    beta = self.b_proj(x).float().sigmoid()
    if self.allow_neg_eigval:
        beta = beta * 2.0
    g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
    o, layer.recurrent["recurrent"] = chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=layer.recurrent["recurrent"], chunk_size=self.chunk_size
    )
    gate = self.g_proj(x)
    o = self.o_norm(o, gate.reshape(o.shape))
    return old_project(ops, "gdn_out", o.reshape(B, T, self.value_dim).to(x.dtype), (self.o_proj,))


def old_prep(self, qkv, pos, ops):
    """Attention.prep as it was: q and k concatenated, then the fp32 rotation."""
    B, T, _ = qkv.shape
    H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
    q, k, v = (
        qkv[..., : H * Dh],
        qkv[..., H * Dh : (H + Hkv) * Dh],
        qkv[..., (H + Hkv) * Dh : (H + 2 * Hkv) * Dh],
    )
    if self.qk_norm == "full":
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = q.reshape(B, T, H, Dh), k.reshape(B, T, Hkv, Dh), v.reshape(B, T, Hkv, Dh)
    if self.qk_norm == "head":
        q, k = self.q_norm(q), self.k_norm(k)
    if self.inv_freq is not None:
        cos, sin = ops.rope(pos, self.inv_freq, self.rope_theta)
        qk = old_rotate(torch.cat((q, k), dim=2), cos, sin)
        q, k = qk[:, :, :H], qk[:, :, H:]
    return q, k, v


def _use_old(monkeypatch: pytest.MonkeyPatch) -> None:
    real = GatedDeltaNet.forward

    def gdn(self, x, layer, state, ops=None):
        return (
            real(self, x, layer, state, ops)
            if x.shape[1] == 1
            else old_gdn_prefill(self, x, layer, state, ops)
        )

    monkeypatch.setattr(GatedDeltaNet, "forward", gdn)
    monkeypatch.setattr(Attention, "prep", old_prep)
    monkeypatch.setattr(Ops, "project", old_project)


def ops_of(fn: Callable[[], object]) -> Counter:
    """The aten ops `fn` issues itself (not those nested inside another aten op), by name."""
    with torch.no_grad(), profile() as prof:
        fn()
    evs = [e for e in prof.events() if e.name.startswith("aten::")]
    return Counter(e.name for e in evs if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


# ---- the layers, whole: prefill output and final states ---------------------------------------------

ATTN = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "rope_theta": 10000.0}
CASES = {
    "plain": {},
    "full_qk_norm_gate": {"attention": {**ATTN, "qk_norm": "full", "output_gate": True}},
    "head_qk_norm_partial_rope": {"attention": {**ATTN, "qk_norm": "head", "rope_fraction": 0.5}},
    "gdn_neg_eig_bias": {"gated_deltanet": {"n_heads": 2, "head_k_dim": 8, "head_v_dim": 8,
                                            "chunk_size": 8, "allow_neg_eigval": True, "conv_bias": True}},
}  # fmt: skip


def _states_equal(a, b) -> None:
    ta, tb = a.to_tensors(), b.to_tensors()
    assert ta.keys() == tb.keys()
    for name, t in ta.items():
        assert torch.equal(t, tb[name]), name


def _compare(monkeypatch, model, ids, sizes) -> None:
    with torch.no_grad():
        got, got_state = run_in_pieces(model, ids, sizes)
        with monkeypatch.context() as m:
            _use_old(m)
            want, want_state = run_in_pieces(model, ids, sizes)
    assert torch.equal(got, want)
    _states_equal(got_state, want_state)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_bit_identical_to_replaced_path(monkeypatch, case, dtype):
    model = tiny_model(["gated_deltanet", "attention", "gated_deltanet", "mlp"], seed=4, **CASES[case])
    model = model.to(dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 29), generator=torch.Generator().manual_seed(5))
    _compare(monkeypatch, model, ids, [13, 11, 1, 4])  # two prefill chunks (carried states), a step, a third


def test_prefill_bit_identical_on_the_triton_path(monkeypatch):
    """The same with the Triton kernels on the CPU interpreter (the kernels CUDA runs; on CUDA cuBLAS may
    pick another GEMM for an output of wider row stride, so bit equality is asked of the CPU only)."""
    if not interpreter_on():
        pytest.skip("needs TRITON_INTERPRET=1 set before Triton is imported")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    # the gates' and the L2 norm's own kernels round otherwise than torch (tests/model/test_prefill_stacked.py
    # compares both with float64); everything else on this path is asked to be bit-identical
    monkeypatch.setattr(gated_deltanet, "gdn_gates", gdn_gates_ref)
    monkeypatch.setattr(gated_deltanet, "l2_norm", l2_norm_ref)
    model = tiny_model(["gated_deltanet", "attention"], seed=6, **CASES["full_qk_norm_gate"])
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(7))
    _compare(monkeypatch, model, ids, [20, 4])


# ---- each change on its own: same numbers, the op gone -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 37, 48), (1, 64, 48), (5, 48)])
def test_project_cols_equals_concatenation(dtype, bias, shape):
    torch.manual_seed(0)
    lins = [nn.Linear(48, n, bias=bias).to(dtype) for n in (24, 24, 40)]
    x = torch.randn(*shape, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(project_cols(x, lins), old_project(None, "", x, lins))
    ops = ops_of(lambda: project_cols(x, lins))
    assert "aten::cat" not in ops and "aten::copy_" not in ops
    assert "aten::cat" in ops_of(lambda: old_project(None, "", x, lins))


def test_project_cols_keeps_the_graph_under_autograd():
    lins = [nn.Linear(8, 4), nn.Linear(8, 6)]
    x = torch.randn(3, 5, 8, requires_grad=True)
    project_cols(x, lins).sum().backward()
    assert x.grad is not None and lins[1].weight.grad is not None


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("t", [1, 2, 3, 9])
@pytest.mark.parametrize("init", [False, True])
def test_conv_final_state_reads_the_last_inputs(w, t, init):
    from hybrid_agent.kernels.triton_causal_conv1d import last_inputs

    gen = torch.Generator().manual_seed(w * 10 + t)
    x = torch.randn(2, t, 6, generator=gen).to(torch.bfloat16)
    s0 = torch.randn(2, 6, w - 1, generator=gen) if init else None
    got = last_inputs(x, s0, w)
    assert torch.equal(got, old_conv_final(x, s0, w)) and got.is_contiguous()
    if t >= w - 1:
        assert "aten::cat" not in ops_of(lambda: last_inputs(x, s0, w))


def test_conv_final_state_copies_w_minus_1_columns():
    """The bytes the final state moves: w-1 inputs a channel, not all t of them."""
    from hybrid_agent.kernels.triton_causal_conv1d import last_inputs

    x, s0 = torch.randn(1, 512, 64, dtype=torch.bfloat16), torch.zeros(1, 64, 3)

    def allocated(fn: Callable[[], object]) -> int:
        with profile(profile_memory=True) as prof:
            fn()
        return sum(
            e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None and e.cpu_memory_usage > 0
        )

    assert allocated(lambda: last_inputs(x, s0, 4)) == 64 * 3 * 2  # the (1, 64, 3) bf16 state
    assert allocated(lambda: old_conv_final(x, s0, 4)) >= 64 * 515 * 2  # the whole concatenation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_l2_normalize_equals_replaced(dtype):
    x = (torch.randn(2, 33, 3, 24, dtype=torch.float64) * 3).to(dtype)
    xs = torch.randn(2, 33, 100, dtype=torch.float64).to(dtype)[..., 10:82].reshape(2, 33, 3, 24)  # a view
    for a in (x, xs):
        got = l2_normalize(a)
        assert got.dtype == dtype and torch.equal(got, old_l2_normalize(a))
    if dtype == torch.bfloat16:  # no separate cast back: the product is written in bf16
        new, old = ops_of(lambda: l2_normalize(x)), ops_of(lambda: old_l2_normalize(x))
        assert old["aten::to"] == 2 and new["aten::to"] == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_rotate_by_halves_equals_replaced(dtype, frac):
    Dh = 16
    R = int(Dh * frac)
    pos = torch.arange(5, 5 + 19)
    cos, sin = rope_cos_sin(pos, rope_inv_freq(R, 10000.0))
    wide = torch.randn(2, 19, 3 * 4 * Dh, dtype=torch.float64).to(dtype)
    for x in (wide[..., : 2 * Dh].reshape(2, 19, 2, Dh), wide.view(2, 19, 12, Dh)):  # a view, a whole
        assert torch.equal(rotate(x, cos, sin), old_rotate(x, cos, sin))
    x = wide.view(2, 19, 12, Dh)
    ops = ops_of(lambda: rotate(x, cos, sin))
    assert "aten::cat" not in ops and "aten::neg" not in ops and "aten::to" not in ops
    assert ops_of(lambda: old_rotate(x, cos, sin))["aten::cat"] >= 1


def test_rms_norm_reads_a_column_block_in_place(monkeypatch):
    if not torch.cuda.is_available() and not interpreter_on():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    from hybrid_agent.kernels.triton_rms_norm import gated_rms_norm_triton, row_layout

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    wide = torch.randn(2, 7, 80, device=dev).to(torch.bfloat16)
    x, z, w = wide[..., :32], wide[..., 40:72], torch.randn(32, device=dev)
    for zz in (None, z):
        got = gated_rms_norm_triton(x, zz, w, 1e-6)
        want = gated_rms_norm_triton(x.contiguous(), None if zz is None else zz.contiguous(), w, 1e-6)
        assert torch.equal(got, want) and got.is_contiguous()
    # the kernel reads the block where it lies (the interpreter copies every tensor, so no op count)
    for t in (x, z):
        assert row_layout(t, 32)[0].data_ptr() == t.data_ptr()
    irregular = wide[..., 1:33].transpose(0, 1)
    assert row_layout(irregular, 32)[0].data_ptr() != wide.data_ptr() + 2  # packed


@pytest.mark.parametrize("variant", [{}, {"fused": 0}], ids=["fused", "split"])
def test_delta_rule_reads_v_in_place(variant):
    """Gated DeltaNet's v, a column block of the conv's q|k|v output, is read at its token stride: the
    same output and state as from a packed copy, and no copy made."""
    if not torch.cuda.is_available() and not interpreter_on():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    from dataclasses import replace

    from hybrid_agent.kernels import triton_gated_delta_rule as tgdr
    from hybrid_agent.kernels.testing import make_gdr_inputs
    from hybrid_agent.kernels.triton_gdr_prepare import chunk_operands

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, t, h, dk, dv = 2, 70, 2, 16, 32
    q, k, v, g, beta, s0 = make_gdr_inputs(
        b, t, h, dk, dv, seed=3, dtype=torch.bfloat16, with_init=True, device=dev
    )
    wide = torch.randn(b, t, 2 * h * dk + h * dv + 8, device=dev).to(torch.bfloat16)
    wide[..., 2 * h * dk : 2 * h * dk + h * dv] = v.reshape(b, t, h * dv)
    vs = wide[..., 2 * h * dk : 2 * h * dk + h * dv].reshape(b, t, h, dv)  # (b, t, h, dv), token stride 168
    assert not vs.is_contiguous() and chunk_operands(q, k, vs, g, beta, None, strided_v=True).v is vs
    cfg = replace(tgdr.launch_config(vs.device, tuple(q.shape), q.dtype), **variant)
    got = tgdr.chunk_gated_delta_rule_triton(q, k, vs, g, beta, initial_state=s0, config=cfg)
    want = tgdr.chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state=s0, config=cfg)
    for a, w in zip(got, want, strict=True):
        assert torch.equal(a, w)
