"""kernels/attention_decode.py: the Triton flash-decoding kernel (under TRITON_INTERPRET=1 on the CPU,
natively on a GPU) against the fp32 reference, and the reference against SDPA over the valid slots."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels import attention_decode as ad


def inputs(B: int, H: int, G: int, D: int, M: int, L: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator(device).manual_seed(seed)
    q = torch.randn(B, H, G, D, generator=g, device=device).to(dtype)
    k = torch.randn(B, H, M, D, generator=g, device=device).to(dtype)
    v = torch.randn(B, H, M, D, generator=g, device=device).to(dtype)
    k[:, :, L:] = 1e4  # garbage past the valid slots must not be read
    v[:, :, L:] = float("nan")
    return q, k, v, torch.tensor([L - 1], device=device)


def test_reference_is_sdpa_over_valid_slots() -> None:
    q, k, v, pos = inputs(2, 3, 2, 16, 40, 29, torch.float32, "cpu", 0)
    want = F.scaled_dot_product_attention(q, k[:, :, :29], v[:, :, :29], scale=0.3)
    assert torch.allclose(ad.attention_decode_ref(q, k, v, pos, scale=0.3), want, atol=1e-5)


@pytest.mark.parametrize(
    "B, H, G, D, M, L, dtype",
    [
        (1, 3, 1, 32, 300, 1, torch.float32),  # one key
        (1, 2, 1, 64, 300, 257, torch.float32),  # several splits, ragged last block
        (2, 2, 4, 16, 96, 70, torch.bfloat16),  # grouped queries, batch
        (1, 1, 3, 24, 5000, 4500, torch.float32),  # many keys per split; G, D not powers of two
        (1, 2, 12, 32, 400, 333, torch.bfloat16),  # G = 12 as in bench/gpu_mla.py's gqa-24/2
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "config",
    [
        None,
        ad.DecodeConfig(nsplit=16, block_n=64),
        ad.DecodeConfig(nsplit=4, block_n=16, num_warps=8),
        ad.DecodeConfig(nsplit=8, block_n=16, slots=False),
        ad.DecodeConfig(nsplit=16, block_n=32, prefetch=False),
    ],
    ids=["default", "16x64", "few-splits", "rows", "noprefetch"],
)
def test_triton_matches_reference(monkeypatch: pytest.MonkeyPatch, B, H, G, D, M, L, dtype, config) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        pytest.importorskip("triton")
        monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")  # the interpreter (tests/conftest.py sets it)
    q, k, v, pos = inputs(B, H, G, D, M, L, dtype, device, 1)
    got = ad.attention_decode(q, k, v, pos, scale=D**-0.5, config=config)
    want = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.dtype == q.dtype and not torch.isnan(got).any()
    assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize(
    "config",
    [None, ad.DecodeConfig(block_n=64, prefetch=False), ad.DecodeConfig(nsplit=128, block_n=16),
     ad.DecodeConfig(slots=False)],
    ids=["default", "64-noprefetch", "128x16", "rows"],
)  # fmt: skip
@pytest.mark.parametrize("L", [1024, 16384])
def test_triton_olmo_shape_gpu(config, L: int) -> None:
    """OLMo Hybrid 7B's attention (30 heads of 128, one query head each), bf16, at 1k and 16k keys."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v, pos = inputs(1, 30, 1, 128, L + 64, L, torch.bfloat16, "cuda", 2)
    want = ad.attention_decode_ref(q, k, v, pos, scale=128**-0.5)
    got = ad.attention_decode(q, k, v, pos, scale=128**-0.5, config=config)
    err = float((got.float() - want.float()).norm() / want.float().norm())
    assert err < 1e-2, err


def _gate(q: torch.Tensor, seed: int) -> torch.Tensor:
    """An output gate shaped like q, as a strided view: the gate columns of a wider stacked row (gated
    attention's q|k|v|g projection), not a contiguous tensor."""
    B, H, G, D = q.shape
    g = torch.Generator(q.device.type).manual_seed(seed)
    row = (torch.randn(B, 3 * H * G * D + 5, generator=g, device=q.device) * 3).to(q.dtype)
    return row[:, 2 * H * G * D + 5 :].view(B, H, G, D)


def test_reference_gate_is_the_models_arithmetic() -> None:
    q, k, v, pos = inputs(2, 2, 2, 16, 30, 21, torch.bfloat16, "cpu", 3)
    gate = _gate(q, 4)
    plain = ad.attention_decode_ref(q, k, v, pos, scale=0.25)
    got = ad.attention_decode_ref(q, k, v, pos, scale=0.25, gate=gate)
    assert torch.equal(got, plain * torch.sigmoid(gate))


@pytest.mark.parametrize(
    "B, H, G, D, M, L, dtype",
    [
        (1, 2, 4, 64, 300, 257, torch.bfloat16),  # Qwen3.5-9B's grouping (16 q / 4 kv heads), smaller D
        (2, 1, 1, 32, 90, 40, torch.float32),  # one query head per KV head (the slots form), batch
        (1, 2, 8, 32, 70, 1, torch.bfloat16),  # Qwen3.5-35B-A3B's grouping (16 / 2), one key
    ],
)  # fmt: skip
def test_triton_gate_matches_reference(monkeypatch: pytest.MonkeyPatch, B, H, G, D, M, L, dtype) -> None:
    """The output gate in the combine step: the same numbers as the reference's attn * sigmoid(gate),
    read through the gate's strides."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        pytest.importorskip("triton")
        monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    q, k, v, pos = inputs(B, H, G, D, M, L, dtype, device, 5)
    gate = _gate(q, 6)
    assert gate.storage_offset() > 0 and (B == 1 or not gate.is_contiguous())
    got = ad.attention_decode(q, k, v, pos, scale=D**-0.5, gate=gate)
    want = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5, gate=gate)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())
    plain = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5)
    assert float((got.float() - plain.float()).abs().max()) > 0.1 * float(plain.float().abs().max())  # gated


def test_gate_of_another_shape_is_refused() -> None:
    from hybrid_agent.kernels.errors import KernelInputError

    q, k, v, pos = inputs(1, 2, 2, 16, 20, 10, torch.float32, "cpu", 7)
    with pytest.raises(KernelInputError, match="output gate"):
        ad.attention_decode(q, k, v, pos, scale=0.25, gate=q[:, :1])


@pytest.mark.parametrize(
    "G, D, L, config",
    [
        (1, 256, 140, ad.DecodeConfig(nsplit=64, block_n=4)),  # 35 splits hold keys: chunks of 32 + 3
        pytest.param(4, 256, 555, ad.DecodeConfig(nsplit=128, block_n=16), marks=pytest.mark.slow),
        pytest.param(1, 256, 300, ad.DecodeConfig(nsplit=256), marks=pytest.mark.slow),  # 256 splits
        pytest.param(2, 1024, 700, ad.DecodeConfig(nsplit=64, block_n=8), marks=pytest.mark.slow),  # of 16
    ],
)  # fmt: skip
def test_combine_reads_many_splits_in_chunks(monkeypatch: pytest.MonkeyPatch, G, D, L, config) -> None:
    """The combine step over more splits than fit its registers at once (heads of 256 and more): the
    same numbers as the reference (gated: the gate is applied after the chunks are summed)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        pytest.importorskip("triton")
        monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    assert ad.config_for(2).nsplit == 64 and ad.config_for(30).nsplit == 64
    q, k, v, pos = inputs(1, 1, G, D, L + 5, L, torch.float32, device, 8)
    gate = _gate(q, 9)
    got = ad.attention_decode(q, k, v, pos, scale=D**-0.5, config=config, gate=gate)
    want = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5, gate=gate)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize("Hkv, G", [(4, 4), (2, 8)], ids=["qwen3.5-9b", "qwen3.5-35b-a3b"])
@pytest.mark.parametrize("L", [1024, 16384])
@pytest.mark.parametrize("gated", [False, True])
def test_triton_qwen3_5_shapes_gpu(Hkv: int, G: int, L: int, gated: bool) -> None:
    """Qwen3.5's attention (heads of 256, GQA 16 / 4 and 16 / 2), bf16, the default launch (64 splits),
    with and without the output gate."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v, pos = inputs(1, Hkv, G, 256, L + 64, L, torch.bfloat16, "cuda", 3)
    gate = _gate(q, 4) if gated else None
    want = ad.attention_decode_ref(q, k, v, pos, scale=256**-0.5, gate=gate)
    got = ad.attention_decode(q, k, v, pos, scale=256**-0.5, gate=gate)
    err = float((got.float() - want.float()).norm() / want.float().norm())
    assert err < 1e-2, err


def test_engine_applies_a_strided_gate_after_the_kernel() -> None:
    """EngineOps.attend fuses the output gate when its channels are contiguous (a view of the stacked
    projection) and applies a gate whose channels are not after the kernel: the same numbers."""
    from hybrid_agent.model import HybridConfig, HybridLM
    from hybrid_agent.model.decode.engine import DecodeEngine

    cfg = HybridConfig.model_validate(
        {"vocab_size": 50, "d_model": 32, "layer_types": ["attention"], "mlp": {"hidden_dim": 32},
         "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "output_gate": True,
                       "rope_fraction": 0.5}}
    )  # fmt: skip
    torch.manual_seed(0)
    engine = DecodeEngine(HybridLM(cfg).eval(), max_context=16, attention="kernel")
    engine.prefill(torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(1)))
    mixer, layer = engine.model.layers[0].mixer, engine.state.layers[0]
    g = torch.Generator().manual_seed(2)
    q, pos = torch.randn(1, 1, 4, 8, generator=g), torch.tensor([8])
    row = torch.randn(1, 1, 2 * 32, generator=g)
    fused, strided = row[..., :32], row[..., ::2]  # contiguous channels / every other one
    assert fused.stride(-1) == 1 and strided.stride(-1) == 2
    plain = engine.ops.attend(mixer, layer, engine.state, q, pos)
    for gate in (fused, strided):
        got = engine.ops.attend(mixer, layer, engine.state, q, pos, gate)
        assert torch.equal(got, plain * torch.sigmoid(gate))


def ragged(B: int, H: int, G: int, D: int, M: int, lens: list[int], dtype: torch.dtype, seed: int):
    """Inputs whose rows hold lens[b] valid slots each; garbage past each row's own length."""
    g = torch.Generator("cpu").manual_seed(seed)
    q = torch.randn(B, H, G, D, generator=g).to(dtype)
    k = torch.randn(B, H, M, D, generator=g).to(dtype)
    v = torch.randn(B, H, M, D, generator=g).to(dtype)
    for b, n in enumerate(lens):
        k[b, :, n:] = 1e4
        v[b, :, n:] = float("nan")
    return q, k, v, torch.tensor([n - 1 for n in lens])


@pytest.mark.parametrize(
    "H, G, D, lens, dtype, config",
    [
        (2, 1, 32, [1, 130, 40], torch.float32, ad.DecodeConfig(nsplit=8)),  # slots; a row of one key
        (2, 1, 32, [300, 3, 129, 64], torch.float32, ad.DecodeConfig(nsplit=8, block_n=16, prefetch=False)),
        (2, 4, 16, [70, 5, 96], torch.bfloat16, ad.DecodeConfig(nsplit=4, block_n=16)),  # grouped (tl.dot)
        (1, 3, 24, [33, 200], torch.float32, ad.DecodeConfig(nsplit=8, block_n=16, slots=False)),
    ],
)  # fmt: skip
def test_per_row_positions(monkeypatch: pytest.MonkeyPatch, H, G, D, lens, dtype, config) -> None:
    """pos (B,): each row attends over its own length, in the reference and the kernel (the interpreter
    here), and each equals that row run alone; the output gate applies per row too."""
    pytest.importorskip("triton")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    B, M = len(lens), max(lens) + 40
    q, k, v, pos = ragged(B, H, G, D, M, lens, dtype, 3)
    gate = torch.randn(B, H, G, D, generator=torch.Generator().manual_seed(4)).to(dtype)
    want = ad.attention_decode_ref(q, k, v, pos, scale=D**-0.5, gate=gate)
    got = ad.attention_decode(q, k, v, pos, scale=D**-0.5, config=config, gate=gate)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert not torch.isnan(got).any() and not torch.isnan(want).any()
    assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())
    for b in range(B):  # the row alone, with its own single position
        alone = ad.attention_decode(
            q[b : b + 1], k[b : b + 1], v[b : b + 1], pos[b : b + 1], scale=D**-0.5, config=config,
            gate=gate[b : b + 1],
        )  # fmt: skip
        assert torch.equal(got[b : b + 1], alone)


def test_per_row_positions_checked() -> None:
    q, k, v, _ = ragged(3, 1, 1, 8, 20, [4, 5, 6], torch.float32, 0)
    with pytest.raises(ad.KernelInputError, match=r"\(1,\) or \(B,\)"):
        ad.attention_decode(q, k, v, torch.tensor([1, 2]), scale=1.0)


@pytest.mark.gpu
def test_per_row_positions_gpu() -> None:
    """Rows of 1 to 16k keys in one launch (OLMo Hybrid 7B's attention shape, bf16), each against the
    reference and the row alone."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    lens = [1, 1000, 16384, 77]
    q, k, v, pos = (t.cuda() for t in ragged(len(lens), 30, 1, 128, 16448, lens, torch.bfloat16, 5))
    cfg = ad.DecodeConfig(nsplit=16)  # the same splits alone (the default choice depends on B)
    got = ad.attention_decode(q, k, v, pos, scale=128**-0.5, config=cfg)
    want = ad.attention_decode_ref(q, k, v, pos, scale=128**-0.5)
    for b in range(len(lens)):
        err = float((got[b].float() - want[b].float()).norm() / want[b].float().norm())
        assert err < 1e-2, (b, err)
        alone = ad.attention_decode(q[b : b + 1], k[b : b + 1], v[b : b + 1], pos[b : b + 1], scale=128**-0.5,
                                    config=cfg)  # fmt: skip
        assert torch.equal(got[b : b + 1], alone)
