"""Gated DeltaNet's prefill chunk with its input projections as one matmul and its gates in one pass: the
q|k|v|a|b|g projection through the stacked weight the decode engine rebinds the linears to (model/ops.py
`stacked_weights`, `project_stacked`), q|k|v, a, b and the output gate read as column blocks of that one
output (the conv, kernels.gdn_gates and the gated norm read them in place), against the path it replaced
(six matmuls, ten elementwise ops for the gates; kept here as it was). Bit-identical where the arithmetic
is the same; the fp32 stacked matmul (another blocking on the CPU) and the gates' Triton kernel (its own
exp/log) are compared with a float64 reference instead, and their error must not be larger."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import causal_conv1d, chunk_gated_delta_rule
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.kernels.gdn_gates import gdn_gates, gdn_gates_ref
from hybrid_agent.kernels.l2_norm import l2_norm, l2_norm_ref
from hybrid_agent.model.decode.ops import _concat, plan_concat
from hybrid_agent.model.gated_deltanet import GatedDeltaNet, l2_normalize
from hybrid_agent.model.ops import Ops, project_cols, project_stacked, stacked_weights
from hybrid_agent.model.testing import tiny_model
from torch import nn
from torch.profiler import profile

# ---- the replaced code, as it was ------------------------------------------------------------------


def old_gdn_prefill(self, x, layer, state, ops=None):
    """GatedDeltaNet.forward's T > 1 branch as it was: q|k|v by one `project` call, a, b and the gate by
    their own matmuls, the gates in torch."""
    ops = ops or Ops()
    B, T, _ = x.shape
    Hv, Dv = self.n_v_heads, self.head_v_dim
    weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
    conv = layer.recurrent["conv"]
    qkv = project_cols(x, (self.q_proj, self.k_proj, self.v_proj))
    qkv, final = causal_conv1d(qkv, weight, bias, initial_state=conv.to(qkv.dtype))
    layer.recurrent["conv"] = final.float()
    q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
    q = l2_normalize(q.reshape(B, T, self.n_heads, self.head_k_dim))
    k = l2_normalize(k.reshape(B, T, self.n_heads, self.head_k_dim))
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
    return F.linear(o.reshape(B, T, self.value_dim).to(x.dtype), self.o_proj.weight)


def old_project(self, role, x, linears):
    """Ops.project as it was: one matmul per linear, each into its block of columns."""
    if len(linears) == 1:
        return F.linear(x, linears[0].weight, linears[0].bias)
    if x.numel() > x.shape[-1]:
        return project_cols(x, linears)
    return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], dim=-1)


def _use_old(monkeypatch: pytest.MonkeyPatch) -> None:
    real = GatedDeltaNet.forward

    def gdn(self, x, layer, state, ops=None):
        if x.shape[1] == 1:
            return real(self, x, layer, state, ops)
        return old_gdn_prefill(self, x, layer, state, ops)

    monkeypatch.setattr(GatedDeltaNet, "forward", gdn)
    monkeypatch.setattr(Ops, "project", old_project)


def ops_of(fn: Callable[[], object]) -> Counter:
    """The aten ops `fn` issues itself (not those nested inside another aten op), by name."""
    with torch.no_grad(), profile() as prof:
        fn()
    evs = [e for e in prof.events() if e.name.startswith("aten::")]
    return Counter(e.name for e in evs if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


STACKED = {"stacked_devices": ("cpu", "cuda")}  # the stacked path on the CPU too (the default: CUDA only)


def run_in_pieces(model, ids, sizes):
    """The logits of `ids` fed in pieces of `sizes` tokens and the state after, each call with its own
    `Ops` that takes the stacked path on the CPU."""
    state, out, start = model.new_state(ids.shape[0]), [], 0
    for n in sizes:
        out.append(model(ids[:, start : start + n], state, Ops(**STACKED)))
        start += n
    return torch.cat(out, dim=1), state


def _stacked(model) -> None:
    """The linears of each layer that read one input rebound to views of one stacked weight, as the
    decode engine does on CUDA (model/decode/engine.py), here on the CPU."""
    plan_concat(model, share=True, align=16)
    for block in model.layers:
        if isinstance(block.mixer, GatedDeltaNet):
            assert stacked_weights(block.mixer.in_projs) is not None


# ---- finding the stacked weight ----------------------------------------------------------------------


def test_stacked_weights_found_only_for_adjacent_views():
    torch.manual_seed(0)
    lins = [nn.Linear(16, n, bias=False) for n in (8, 8, 12, 3, 3, 12)]
    assert stacked_weights(lins) is None  # separate parameters: project_cols
    w, _ = _concat(lins, True, 16)  # (48, 16): 46 rows and 2 of zeros
    got = stacked_weights(lins)
    assert got is not None and got[1] is None
    assert got[0].data_ptr() == w.data_ptr() and got[0].shape == (46, 16) and torch.equal(got[0], w[:46])
    assert stacked_weights(lins[1:]) is not None  # any run of consecutive views
    assert stacked_weights([lins[1], lins[0]]) is None  # out of order
    assert stacked_weights([lins[0], lins[2]]) is None  # a gap
    # a weight loaded in place stays stacked (and the matmul reads the new values, no stale copy) ...
    new = torch.randn(3, 16)
    lins[3].load_state_dict({"weight": new})
    assert torch.equal(stacked_weights(lins)[0][28:31], new)  # type: ignore[index]
    # ... one replaced by a new tensor (a loader or a shard rebinding it) is not: back to project_cols
    lins[4].weight = nn.Parameter(torch.randn(3, 16))
    assert stacked_weights(lins) is None


def test_stacked_biases():
    torch.manual_seed(1)
    lins = [nn.Linear(16, n) for n in (8, 5, 7)]
    _concat(lins, True, 8)
    got = stacked_weights(lins)
    assert got is not None and got[1] is not None
    assert torch.equal(got[1], torch.cat([lin.bias for lin in lins]))
    mixed, w = [nn.Linear(16, 4), nn.Linear(16, 4, bias=False)], torch.randn(8, 16)
    for i, lin in enumerate(mixed):  # adjacent weights, but only the first has a bias
        lin.weight = nn.Parameter(w[4 * i : 4 * i + 4])
    assert stacked_weights(mixed) is None


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 37, 48), (1, 64, 48), (5, 48)])
def test_project_stacked(bias, shape):
    """bf16: the same numbers as one matmul per block; fp32: the CPU's matmul blocks a wider output
    otherwise, so both are compared with float64, and the stacked one is no further from it."""
    torch.manual_seed(0)
    lins = [nn.Linear(48, n, bias=bias) for n in (24, 24, 40, 3, 3, 40)]
    x64 = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        parts = [F.linear(x64, lin.weight.double(), lin.bias.double() if bias else None) for lin in lins]
        ref = torch.cat(parts, -1)
        for dtype in (torch.bfloat16, torch.float32):
            ls = [nn.Linear(48, lin.out_features, bias=bias, dtype=dtype) for lin in lins]
            for a, b in zip(ls, lins, strict=True):
                a.load_state_dict(b.state_dict())
            x = x64.to(dtype)
            want = project_cols(x, ls)
            _concat(ls, True, 16)
            assert torch.equal(Ops().project("gdn_in", x, ls), want)  # the CPU's default: per block
            got = Ops(**STACKED).project("gdn_in", x, ls)
            assert got.shape == want.shape and got.stride(-2) % 8 == 0  # 134 columns, rows of 136
            assert torch.equal(got, project_stacked(x, *stacked_weights(ls)))  # type: ignore[misc]
            if dtype == torch.bfloat16:
                assert torch.equal(got, want)
            else:
                e_new, e_old = (got.double() - ref).abs(), (want.double() - ref).abs()
                assert e_new.max() <= 2 * e_old.max() + 1e-12 and e_new.mean() <= 1.25 * e_old.mean() + 1e-12
    ops = ops_of(lambda: Ops(**STACKED).project("gdn_in", x, ls))
    assert ops["aten::mm"] + ops["aten::addmm"] == 1


# ---- the mixer and a whole model ----------------------------------------------------------------------

GDN = {"gated_deltanet": {"n_heads": 2, "n_v_heads": 4, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8}}
GDN_NEG = {
    "gated_deltanet": {"n_heads": 2, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8,
                       "allow_neg_eigval": True, "conv_bias": True},
}  # fmt: skip
LAYERS = ["gated_deltanet", "attention", "gated_deltanet", "mlp"]


def _states(state):
    return state.to_tensors()


def _runs(monkeypatch, dtype, case, sizes, ids):
    """(logits, states) of the old path on separate weights, the new path on separate weights, and the
    new path on stacked weights, for the same model."""
    out = []
    for stacked, old in ((False, True), (False, False), (True, False)):
        model = tiny_model(LAYERS, seed=4, **case).to(dtype)
        if stacked:
            _stacked(model)
        with torch.no_grad(), monkeypatch.context() as m:
            if old:
                _use_old(m)
            logits, state = run_in_pieces(model, ids, sizes)
        out.append((logits, _states(state)))
    return out


@pytest.mark.parametrize("case", [GDN, GDN_NEG], ids=["grouped", "neg_eig_bias"])
def test_model_prefill_bf16_bit_identical(monkeypatch, case):
    ids = torch.randint(0, 267, (2, 29), generator=torch.Generator().manual_seed(5))
    (lo, so), (ls, ss), (lt, st) = _runs(monkeypatch, torch.bfloat16, case, [13, 11, 1, 4], ids)
    for logits, states in ((ls, ss), (lt, st)):
        assert torch.equal(logits, lo)
        assert states.keys() == so.keys() and all(torch.equal(states[n], so[n]) for n in so)


@pytest.mark.parametrize("case", [GDN, GDN_NEG], ids=["grouped", "neg_eig_bias"])
def test_model_prefill_fp32_against_float64(monkeypatch, case):
    """Separate weights: bit-identical; stacked: no further from the float64 model than the old path."""
    ids = torch.randint(0, 267, (2, 29), generator=torch.Generator().manual_seed(5))
    sizes = [13, 11, 1, 4]
    (lo, so), (ls, ss), (lt, st) = _runs(monkeypatch, torch.float32, case, sizes, ids)
    assert torch.equal(ls, lo) and all(torch.equal(ss[n], so[n]) for n in so)
    model = tiny_model(LAYERS, seed=4, **case).double()
    with torch.no_grad(), monkeypatch.context() as m:
        _use_old(m)
        ref, ref_state = run_in_pieces(model, ids, sizes)
    e_new, e_old = (lt.double() - ref).abs(), (lo.double() - ref).abs()
    assert e_new.max() <= 2 * e_old.max() and e_new.mean() <= 1.25 * e_old.mean()
    rs = _states(ref_state)
    for n in so:
        if so[n].is_floating_point():
            assert (st[n].double() - rs[n]).abs().max() <= 2 * (so[n].double() - rs[n]).abs().max() + 1e-9, n


def test_mixer_prefill_issues_two_matmuls(monkeypatch):
    """A prefill chunk of a layer on stacked weights: its in- and out-projections, two matmuls (seven
    before), and no elementwise gate ops on the Triton path."""
    model = tiny_model(["gated_deltanet"], seed=2, **GDN)
    _stacked(model)
    mixer, state = model.layers[0].mixer, model.new_state(1)
    x = torch.randn(1, 12, 32)
    new = ops_of(lambda: mixer(x, state.layers[0], state, Ops(**STACKED)))
    with monkeypatch.context() as m:
        _use_old(m)
        old = ops_of(lambda: mixer(x, model.new_state(1).layers[0], state))
    # (the delta rule's reference issues its own products as aten::matmul: not counted)
    assert new["aten::mm"] == 1 and new["aten::linear"] == 1 and new["aten::addmm"] == 0
    assert old["aten::linear"] == 4 and old["aten::mm"] == 3  # a, b, g and o; q, k, v into their columns
    if interpreter_on():
        monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
        tri = ops_of(lambda: mixer(x, model.new_state(1).layers[0], state, Ops(**STACKED)))
        assert not {"aten::sigmoid", "aten::softplus", "aten::exp", "aten::pow", "aten::rsqrt"} & set(tri)


# ---- the kernels on the CPU interpreter ----------------------------------------------------------------


def _gate_inputs(B, T, H, dtype, seed, wide=True):
    gen = torch.Generator().manual_seed(seed)
    proj = (torch.randn(B, T, 2 * H + 10, generator=gen) * 6).to(dtype)  # a, b as column blocks
    proj[0, 0, :H] = torch.tensor([30.0, -30.0, 19.9, 20.1, -90.0, 0.0] * H)[:H].to(dtype)  # softplus' edges
    A_log = torch.rand(H, generator=gen) * 2.7  # exp(A_log) in [1, 16)
    dt_bias = torch.randn(H, generator=gen)
    a, b = proj[..., 3 : 3 + H], proj[..., 3 + H : 3 + 2 * H]
    return (a, b, A_log, dt_bias) if wide else (a.contiguous(), b.contiguous(), A_log, dt_bias)


def _gates64(a, b, A_log, dt_bias, neg):
    beta = torch.sigmoid(b.double()) * (2.0 if neg else 1.0)
    g = -A_log.double().exp() * F.softplus(a.double() + dt_bias.double())
    return g, beta


def _gate_err(got, ref):
    """Relative error per element (floored at the smallest normal fp32)."""
    return ((got.double() - ref).abs() / ref.abs().clamp_min(1.2e-38)).max().item()


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gdn_gates_ref_is_the_model_arithmetic(neg, dtype):
    a, b, A_log, dt_bias = _gate_inputs(2, 37, 6, dtype, seed=1)
    g, beta = gdn_gates_ref(a, b, A_log, dt_bias, allow_neg_eigval=neg)
    want_beta = b.contiguous().float().sigmoid() * (2.0 if neg else 1.0)
    want_g = -A_log.float().exp() * F.softplus(a.contiguous().float() + dt_bias.float())
    assert torch.equal(g, want_g) and torch.equal(beta, want_beta) and g.dtype == beta.dtype == torch.float32


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 37, 6), (1, 130, 30), (3, 1, 1)])
def test_gdn_gates_triton(dev, neg, dtype, shape):
    a, b, A_log, dt_bias = (t.to(dev) for t in _gate_inputs(*shape, dtype, seed=shape[1]))
    g, beta = gdn_gates(a, b, A_log, dt_bias, allow_neg_eigval=neg)
    assert g.is_contiguous() and beta.is_contiguous() and g.shape == beta.shape == shape
    g_ref, beta_ref = gdn_gates_ref(a, b, A_log, dt_bias, allow_neg_eigval=neg)
    g64, beta64 = _gates64(a.cpu(), b.cpu(), A_log.cpu(), dt_bias.cpu(), neg)
    for got, ref, r64 in ((g, g_ref, g64), (beta, beta_ref, beta64)):
        e_new, e_old = _gate_err(got.cpu(), r64), _gate_err(ref.cpu(), r64)
        assert e_new <= max(2 * e_old, 4e-7), (e_new, e_old)  # a few fp32 ulps, as torch's


def test_gdn_gates_bad_shapes():
    from hybrid_agent.kernels import KernelInputError

    a = torch.zeros(1, 4, 3)
    with pytest.raises(KernelInputError, match="gdn_gates"):
        gdn_gates(a, a[..., :2], torch.zeros(3), torch.zeros(3), allow_neg_eigval=False)
    with pytest.raises(KernelInputError, match="gdn_gates"):
        gdn_gates(a, a, torch.zeros(2), torch.zeros(3), allow_neg_eigval=False)


@pytest.mark.parametrize("init", [False, True])
def test_conv_reads_a_column_block_in_place(dev, init):
    """The Triton conv over q|k|v as columns of a wider projection: the same output and final state as
    from a packed copy."""
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 45, 100, generator=gen).to(dev, torch.bfloat16)
    x = wide[..., :72]  # token stride 100
    w, bias = torch.randn(72, 4, generator=gen).to(dev), torch.randn(72, generator=gen).to(dev)
    s0 = torch.randn(2, 72, 3, generator=gen).to(dev, torch.bfloat16) if init else None
    got = causal_conv1d(x, w, bias, initial_state=s0)
    want = causal_conv1d(x.contiguous(), w, bias, initial_state=s0)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_gated_norm_reads_heads_of_a_column_block(dev):
    """The gated norm's gate as heads of a column block (rows (n, h, d) at two strides): the numbers of a
    packed gate, read in place."""
    from hybrid_agent.kernels.triton_rms_norm import gated_rms_norm_triton, row_layout

    gen = torch.Generator().manual_seed(4)
    wide = torch.randn(2, 9, 70, generator=gen).to(dev, torch.bfloat16)
    z = wide[..., 6:54].reshape(2, 9, 3, 16)  # heads at stride 16, tokens at stride 70
    x, w = torch.randn(2, 9, 3, 16, generator=gen).to(dev, torch.bfloat16), torch.randn(16).to(dev)
    got = gated_rms_norm_triton(x, z, w, 1e-6)
    assert torch.equal(got, gated_rms_norm_triton(x, z.contiguous(), w, 1e-6))
    base, h, s, s1 = row_layout(z, 16)
    assert base.data_ptr() == z.data_ptr() and (h, s, s1) == (3, 70, 16)


def _l2_64(x):
    x64 = x.double()
    return x64 / torch.sqrt((x64 * x64).sum(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_l2_norm_triton(dev, dtype):
    """The kernel's outputs no further from float64 than torch's (bf16 on the GPU only: the interpreter
    truncates fp32 to bf16 where the GPU rounds to nearest), q's heads read where they lie in the conv's
    q|k|v output."""
    from hybrid_agent.kernels.triton_rms_norm import row_layout

    gen = torch.Generator().manual_seed(8)
    wide = (torch.randn(2, 300, 200, generator=gen) * 3).to(dev, dtype)
    wide[1, 7] = 0  # a zero row: zeros out
    q = wide[..., 8 : 8 + 6 * 24].reshape(2, 300, 6, 24)  # heads at stride 24, tokens at stride 200
    base, h, s, s1 = row_layout(q, 24)
    assert base.data_ptr() == q.data_ptr() and (h, s, s1) == (6, 200, 24)
    for x in (q, wide[..., :40]):
        got, want, ref = l2_norm(x), l2_norm_ref(x), _l2_64(x)
        assert got.dtype == dtype and got.is_contiguous() and not got[1, 7].any()
        e_new, e_old = (got.double() - ref).abs(), (want.double() - ref).abs()
        assert e_new.max() <= 1.05 * e_old.max() and e_new.mean() <= 1.01 * e_old.mean()
