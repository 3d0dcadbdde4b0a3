"""The engine's fused one-token kernels (kernels/gdn_decode_prep.py, residual_rms_norm.py, silu_mul.py,
attn_decode_prep.py, greedy_advance.py): each reference against the model's own T == 1 arithmetic,
and each Triton kernel against its reference (CPU interpreter in the default run, the GPU under -m gpu)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import causal_conv1d_step, rms_norm
from hybrid_agent.kernels.gdn_decode_prep import gdn_decode_prep_ref
from hybrid_agent.kernels.residual_rms_norm import residual_rms_norm_ref
from hybrid_agent.kernels.silu_mul import silu_mul_ref
from hybrid_agent.model.gated_deltanet import l2_normalize

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = (["cpu"] if INTERP else []) + (
    [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []
)


def _gdn_inputs(
    B: int, Hk: int, Dk: int, Hv: int, Dv: int, W: int, dtype: torch.dtype, device: str, seed: int
):
    g = torch.Generator(device).manual_seed(seed)
    C = 2 * Hk * Dk + Hv * Dv
    N = C + 2 * Hv + 5  # [q | k | v | a | b | spare columns]
    proj = (torch.randn(B, N, generator=g, device=device) * 2).to(dtype)
    state = torch.randn(B, C, W - 1, generator=g, device=device)
    w = torch.randn(C, W, generator=g, device=device).to(dtype)
    bias = torch.randn(C, generator=g, device=device).to(dtype)
    a_log = torch.rand(Hv, generator=g, device=device) * 3
    dt_bias = torch.randn(Hv, generator=g, device=device)
    return proj, state, w, bias, a_log, dt_bias, dict(Hk=Hk, Dk=Dk, Hv=Hv, Dv=Dv, a_off=C, b_off=C + Hv)


def test_gdn_prep_reference_is_the_model_arithmetic() -> None:
    proj, state, w, bias, a_log, dt_bias, kw = _gdn_inputs(2, 2, 8, 4, 6, 4, torch.float32, "cpu", 0)
    s0 = state.clone()
    q, k, v, g, beta = gdn_decode_prep_ref(proj, state, w, bias, a_log, dt_bias, allow_neg_eigval=True, **kw)
    C = kw["a_off"]
    qkv = causal_conv1d_step(proj[:, :C], s0, w, bias)
    torch.testing.assert_close(state, s0)
    wq, wk, wv = qkv.split([16, 16, 24], dim=-1)
    torch.testing.assert_close(q, l2_normalize(wq.view(2, 2, 8)).repeat_interleave(2, 1))
    torch.testing.assert_close(k, l2_normalize(wk.view(2, 2, 8)).repeat_interleave(2, 1))
    torch.testing.assert_close(v, wv.reshape(2, 4, 6))
    torch.testing.assert_close(beta, 2 * proj[:, C + 4 : C + 8].sigmoid())
    torch.testing.assert_close(g, -a_log.exp() * F.softplus(proj[:, C : C + 4] + dt_bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [(1, 3, 12, 3, 20, 4, False), (2, 2, 16, 4, 8, 3, True), (1, 16, 128, 32, 128, 4, False)],
    ids=["mha", "gqa-neg", "qwen3.5"],
)
def test_gdn_prep_triton(device: str, shape: tuple) -> None:
    from hybrid_agent.kernels.triton_gdn_decode_prep import gdn_decode_prep_triton

    B, Hk, Dk, Hv, Dv, W, neg = shape
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    proj, state, w, bias, a_log, dt_bias, kw = _gdn_inputs(B, Hk, Dk, Hv, Dv, W, dtype, device, 1)
    s_ref = state.clone()
    want = gdn_decode_prep_ref(proj, s_ref, w, bias, a_log, dt_bias, allow_neg_eigval=neg, **kw)
    got = gdn_decode_prep_triton(proj, state, w, bias, a_log, dt_bias, allow_neg_eigval=neg, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, s_ref, rtol=1e-6, atol=1e-6)
    for name, x, y in zip(("q", "k", "v", "g", "beta"), got, want, strict=True):
        torch.testing.assert_close(x.float(), y.float(), **tol, msg=name)


def test_residual_rms_norm_reference_is_the_block_arithmetic() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 1, 16, generator=g).bfloat16(), torch.randn(2, 1, 16, generator=g).bfloat16()
    w1, w2 = torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) + 0.5
    x1 = x.clone()
    out = residual_rms_norm_ref(x1, y, w1, w2, 1e-6)
    want_x = x + rms_norm(y, w1, 1e-6)  # post-norm block: x + norm(mixer(x)), then the next norm
    assert torch.equal(x1, want_x) and out is not None and torch.equal(out, rms_norm(want_x, w2, 1e-6))
    x2 = x.clone()
    assert residual_rms_norm_ref(x2, y, None, None, 1e-6) is None and torch.equal(x2, x + y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wy, wo", [(True, True), (False, True), (True, False)])
def test_residual_rms_norm_triton(device: str, wy: bool, wo: bool) -> None:
    from hybrid_agent.kernels.triton_residual_rms_norm import residual_rms_norm_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    g = torch.Generator(device).manual_seed(3)
    D = 3840 if device == "cuda" else 48
    x, y = (torch.randn(2, 1, D, generator=g, device=device).to(dtype) for _ in range(2))
    w1, w2 = (torch.rand(D, generator=g, device=device) + 0.5 for _ in range(2))
    xr, xt = x.clone(), x.clone()
    want = residual_rms_norm_ref(xr, y, w1 if wy else None, w2 if wo else None, 1e-6)
    got = residual_rms_norm_triton(xt, y, w1 if wy else None, w2 if wo else None, 1e-6)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(xt.float(), xr.float(), **tol)
    if wo:
        assert got is not None and want is not None
        torch.testing.assert_close(got.float(), want.float(), **tol)
    else:
        assert got is None


@pytest.mark.parametrize("device", DEVICES)
def test_silu_mul_triton(device: str) -> None:
    from hybrid_agent.kernels.triton_silu_mul import silu_mul_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    gu = torch.randn(2, 1, 2 * 1500, device=device, generator=torch.Generator(device).manual_seed(4)).to(
        dtype
    )
    want = silu_mul_ref(gu)
    torch.testing.assert_close(want, F.silu(gu[..., :1500]) * gu[..., 1500:])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(silu_mul_triton(gu).float(), want.float(), **tol)


def _attn_inputs(B: int, H: int, Hkv: int, Dh: int, M: int, R: int, norm: str, dtype, device: str, seed: int):
    g = torch.Generator(device).manual_seed(seed)
    qkv = (torch.randn(B, (H + 2 * Hkv) * Dh + 3, generator=g, device=device) * 2).to(dtype)  # 3 pad columns
    wdim = {"full": (H * Dh, Hkv * Dh), "head": (Dh, Dh)}.get(norm)
    q_w = (torch.rand(wdim[0], generator=g, device=device) + 0.5).to(dtype) if wdim else None
    k_w = (torch.rand(wdim[1], generator=g, device=device) + 0.5).to(dtype) if wdim else None
    k_buf = torch.randn(B, Hkv, M, Dh, generator=g, device=device).to(dtype)
    v_buf = torch.randn(B, Hkv, M, Dh, generator=g, device=device).to(dtype)
    pos_buf = torch.full((M,), -7, dtype=torch.long, device=device)
    pos = torch.tensor([M - 3], device=device)  # a late slot: position-dependent angles matter
    cos = sin = None
    if R:
        from hybrid_agent.model.rope import rope_cos_sin, rope_inv_freq

        inv_freq = rope_inv_freq(R, 10000.0).to(device)
        cos, sin = (t.reshape(-1).contiguous() for t in rope_cos_sin(pos, inv_freq))
    return qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf


@pytest.mark.parametrize("norm", ["full", "head", "none"])
def test_attn_prep_reference_is_the_model_arithmetic(norm: str) -> None:
    from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep_ref
    from hybrid_agent.model.rope import rotate

    B, H, Hkv, Dh, M, R = 2, 4, 2, 8, 11, 6  # partial RoPE (6 of 8 channels)
    qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf = _attn_inputs(B, H, Hkv, Dh, M, R, norm,
                                                                        torch.bfloat16, "cpu", 5)  # fmt: skip
    k0, v0 = k_buf.clone(), v_buf.clone()
    q = attn_decode_prep_ref(qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf, H=H, Hkv=Hkv, Dh=Dh,
                             eps=1e-6, qk_norm=norm)  # fmt: skip
    # Attention.prep's order: norm ("full" before the head view), view, norm ("head"), rotate
    wq, wk, wv = qkv[:, : H * Dh], qkv[:, H * Dh : (H + Hkv) * Dh], qkv[:, (H + Hkv) * Dh : -3]
    if norm == "full":
        wq, wk = rms_norm(wq, q_w, 1e-6), rms_norm(wk, k_w, 1e-6)
    wq, wk = wq.view(B, 1, H, Dh), wk.view(B, 1, Hkv, Dh)
    if norm == "head":
        wq, wk = rms_norm(wq, q_w, 1e-6), rms_norm(wk, k_w, 1e-6)
    c4, s4 = cos.view(1, 1, 1, R), sin.view(1, 1, 1, R)
    wq, wk = rotate(wq, c4, s4), rotate(wk, c4, s4)
    assert torch.equal(q, wq[:, 0])
    slot = int(pos)
    assert torch.equal(k_buf[:, :, slot], wk[:, 0]) and torch.equal(v_buf[:, :, slot], wv.view(B, Hkv, Dh))
    others = [i for i in range(M) if i != slot]
    assert torch.equal(k_buf[:, :, others], k0[:, :, others])
    assert torch.equal(v_buf[:, :, others], v0[:, :, others])
    assert int(pos_buf[slot]) == slot and bool((pos_buf[others] == -7).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm, R", [("full", 8), ("head", 6), ("none", 0)])
def test_attn_prep_triton(device: str, norm: str, R: int) -> None:
    from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep_ref
    from hybrid_agent.kernels.triton_attn_decode_prep import attn_decode_prep_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # the GPU at OLMo Hybrid 7B's attention shape (30 heads of 128, full QK-norm, full RoPE)
    B, H, Hkv, Dh, M = (1, 30, 30, 128, 1100) if device == "cuda" else (2, 6, 3, 8, 9)
    R = Dh if device == "cuda" and R == 8 else R
    ins = _attn_inputs(B, H, Hkv, Dh, M, R, norm, dtype, device, 6)
    ref = [t.clone() if isinstance(t, torch.Tensor) else t for t in ins]
    kw = dict(H=H, Hkv=Hkv, Dh=Dh, eps=1e-6, qk_norm=norm)
    want = attn_decode_prep_ref(*ref, **kw)
    got = attn_decode_prep_triton(*ins, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1.6e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    for name, i in (("k_buf", 6), ("v_buf", 7)):
        torch.testing.assert_close(ins[i].float(), ref[i].float(), **tol, msg=name)
    assert torch.equal(ins[8], ref[8])


@pytest.mark.parametrize("device", DEVICES)
def test_attn_prep_triton_partial_rope_with_gate_columns(device: str) -> None:
    """Qwen3.5's attention: per-head QK-norm, RoPE on a quarter of each head (64 of 256 on the GPU, 4 of
    16 here), GQA, and the output gate's H * Dh columns after q|k|v in the stacked row (left alone)."""
    from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep_ref
    from hybrid_agent.kernels.triton_attn_decode_prep import attn_decode_prep_triton

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    B, H, Hkv, Dh, M = (1, 16, 4, 256, 1100) if device == "cuda" else (2, 4, 2, 16, 9)
    qkv, *rest = _attn_inputs(B, H, Hkv, Dh, M, Dh // 4, "head", dtype, device, 8)
    gate = torch.randn(B, H * Dh, device=device, generator=torch.Generator(device).manual_seed(9)).to(dtype)
    ins = [torch.cat((qkv, gate), dim=1), *rest]
    ref = [t.clone() if isinstance(t, torch.Tensor) else t for t in ins]
    kw = dict(H=H, Hkv=Hkv, Dh=Dh, eps=1e-6, qk_norm="head")
    want = attn_decode_prep_ref(*ref, **kw)
    got = attn_decode_prep_triton(*ins, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1.6e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    for name, i in (("k_buf", 6), ("v_buf", 7)):
        torch.testing.assert_close(ins[i].float(), ref[i].float(), **tol, msg=name)
    assert torch.equal(ins[0], ref[0])  # the row, gate columns included, is only read
    # the unrotated channels of q are the normalised input as is
    qn = rms_norm(qkv[:, : H * Dh].view(B, H, Dh), ins[1], 1e-6)
    torch.testing.assert_close(got[..., Dh // 4 :].float(), qn[..., Dh // 4 :].float(), **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_advance_triton(device: str) -> None:
    """argmax with ties (the first index wins, as torch.argmax), pos + 1, the token written at pos."""
    from hybrid_agent.kernels.greedy_advance import greedy_advance_ref
    from hybrid_agent.kernels.triton_greedy_advance import greedy_advance_triton

    V = 100352 if device == "cuda" else 9000  # several blocks of 4096 and a ragged last one
    g = torch.Generator(device).manual_seed(7)
    logits = torch.randn(3, V, generator=g, device=device).to(torch.bfloat16)
    logits[1, 5000] = logits[1, 8100] = logits[1, 4097] = 50.0  # a tie across blocks: 4097 wins
    logits[2, 7] = logits[2, 3] = 60.0  # a tie inside one block: 3 wins
    logits[0, 6000] = logits[0, 8000] = float("nan")  # NaN is the maximum (torch.argmax): 6000
    outs = []
    for fn in (greedy_advance_ref, greedy_advance_triton):
        tok = torch.full((3, 1), -1, dtype=torch.long, device=device)
        pos = torch.tensor([4], device=device)
        ids = torch.zeros(3, 9, dtype=torch.long, device=device)
        fn(logits, tok, pos, ids)
        outs.append((tok, pos, ids))
    (t0, p0, i0), (t1, p1, i1) = outs
    assert torch.equal(t1, t0) and torch.equal(p1, p0) and torch.equal(i1, i0)
    assert int(p1) == 5 and t1[1, 0] == 4097 and t1[2, 0] == 3 and torch.equal(i1[:, 5], t1[:, 0])
    assert t1[0, 0] == 6000


def test_attn_prep_refuses_bad_input_before_any_write() -> None:
    from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep
    from hybrid_agent.kernels.errors import KernelInputError

    B, H, Hkv, Dh, M, R = 1, 4, 2, 8, 5, 8
    qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf = _attn_inputs(B, H, Hkv, Dh, M, R, "full",
                                                                        torch.float32, "cpu", 7)  # fmt: skip
    k0 = k_buf.clone()
    bad = [
        dict(qk_norm="layer"),  # not a QK-norm kind
        dict(k_w=None),  # QK-norm without its weight
        dict(qkv=qkv[:, : (H + Hkv) * Dh]),  # no room for v
        dict(Hkv=3),  # H not a multiple of Hkv
    ]
    for over in bad:
        args = dict(qkv=qkv, q_w=q_w, k_w=k_w, cos=cos, sin=sin, pos=pos, k_buf=k_buf, v_buf=v_buf,
                    pos_buf=pos_buf, H=H, Hkv=Hkv, Dh=Dh, eps=1e-6, qk_norm="full")  # fmt: skip
        args.update(over)
        with pytest.raises(KernelInputError, match="attn_decode_prep"):
            attn_decode_prep(**args)  # type: ignore[arg-type]
        assert torch.equal(k_buf, k0)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("norm, R", [("head", 6), ("full", 8)])
def test_attn_prep_per_row_positions(impl: str, norm: str, R: int) -> None:
    """pos (B,) with cos/sin (B, R): each row is rotated at its own position and written at its own slot,
    exactly as that row alone with its single position (the reference; the kernel under the
    interpreter against it)."""
    from hybrid_agent.kernels.attn_decode_prep import attn_decode_prep, attn_decode_prep_ref
    from hybrid_agent.kernels.errors import KernelInputError
    from hybrid_agent.model.rope import rope_cos_sin, rope_inv_freq

    if impl == "triton":
        pytest.importorskip("triton")
    B, H, Hkv, Dh, M = 3, 4, 2, 8, 9
    qkv, q_w, k_w, _, _, _, k_buf, v_buf, pos_buf = _attn_inputs(B, H, Hkv, Dh, M, R, norm, torch.float32,
                                                                  "cpu", 11)  # fmt: skip
    pos = torch.tensor([1, 7, 4])
    cos, sin = (t.reshape(B, R).contiguous() for t in rope_cos_sin(pos, rope_inv_freq(R, 10000.0)))
    kw = dict(H=H, Hkv=Hkv, Dh=Dh, eps=1e-6, qk_norm=norm)
    k0, v0, p0 = k_buf.clone(), v_buf.clone(), pos_buf.clone()
    if impl == "triton":
        from hybrid_agent.kernels.triton_attn_decode_prep import attn_decode_prep_triton

        q = attn_decode_prep_triton(qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf, **kw)
    else:
        q = attn_decode_prep(qkv, q_w, k_w, cos, sin, pos, k_buf, v_buf, pos_buf, **kw)
    for b in range(B):
        kb, vb, pb = k0[b : b + 1].clone(), v0[b : b + 1].clone(), p0.clone()
        want = attn_decode_prep_ref(
            qkv[b : b + 1], q_w, k_w, cos[b], sin[b], pos[b : b + 1], kb, vb, pb, **kw
        )
        torch.testing.assert_close(q[b : b + 1], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k_buf[b : b + 1], kb, rtol=1e-5, atol=1e-5)
        assert torch.equal(v_buf[b : b + 1], vb)
    assert pos_buf.tolist() == [i if i in (1, 4, 7) else -7 for i in range(M)]
    with pytest.raises(KernelInputError, match="cos/sin"):
        attn_decode_prep(qkv, q_w, k_w, cos[0], sin[0], pos, k_buf, v_buf, pos_buf, **kw)
