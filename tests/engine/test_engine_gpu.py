"""DecodeEngine on the GPU (run on the device machine: pytest -m gpu tests/engine), bf16, a mid-size
OLMo-Hybrid-like model, 256 tokens, both attention modes, against the eager path (`model(token, state)`):

- teacher forcing: the eager greedy tokens are fed to the engine one by one; at every step its logits
  are within bf16 rounding of the eager ones, and its argmax differs only where the eager top two are
  closer than that rounding;
- free-running greedy: identical tokens up to the first such near-tie (if any).
Bit-identical logits are not promised: graph capture may change cuBLAS' kernel choices, and the
kernel attention mode reduces in another order than SDPA. The 7B-shape check is in bench/gpu_e2e.py.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.decode.engine import GEMV_ROLES, DecodeEngine
from hybrid_agent.model.decode.generate import prefill

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected on CPU machines too; skipped there
    pytest.skip("needs a CUDA device", allow_module_level=True)

STEPS = 256


def olmo_like(layer_types: list[str]) -> HybridLM:
    cfg = HybridConfig.from_name("olmo-hybrid-7b", d_model=1024, layer_types=layer_types, vocab_size=4096)
    cfg = cfg.model_copy(update={"init_std": 0.05})
    torch.manual_seed(0)
    return HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


def check_against_eager(model: HybridLM, engine: DecodeEngine, prompt: torch.Tensor) -> int:
    """Runs both checks of the module docstring; returns the length of the identical greedy prefix."""
    state = model.new_state()
    logits = prefill(model, prompt, state)[0].float()
    want, eager = [], []
    for _ in range(STEPS):
        eager.append(logits)
        want.append(int(logits.argmax()))
        logits = model(torch.tensor([[want[-1]]], device="cuda"), state)[0, -1].float()
    forced = [engine.prefill(prompt)[0].float().clone()]
    forced += [engine.step(t)[0].float().clone() for t in want[:-1]]
    for i, (e, x) in enumerate(zip(eager, forced, strict=True)):
        noise = float((e - x).abs().max())
        assert noise <= 0.05 * float(e.abs().max()), f"step {i}: logits differ by {noise}"
        top, got = int(e.argmax()), int(x.argmax())
        assert got == top or float(e[top] - e[got]) <= 2 * noise, f"step {i}: argmax flips outside noise"
    engine.reset()
    engine.prefill(prompt)
    greedy = engine.generate_greedy(STEPS, sync_every=32)
    same = next((i for i, (a, b) in enumerate(zip(greedy, want, strict=True)) if a != b), STEPS)
    if same < STEPS:  # the first divergence must be a near-tie of the eager logits
        e, x = eager[same], forced[same]
        noise = float((e - x).abs().max())
        assert float(e[want[same]] - e[greedy[same]]) <= 2 * noise, f"greedy diverges at {same} outside noise"
    return same


@pytest.mark.parametrize(
    "mode, fuse, layers",
    [
        ("kernel", True, ["gated_deltanet"] * 3 + ["attention"]),  # the default engine, OLMo Hybrid's blocks
        ("kernel", False, ["gated_deltanet"] * 3 + ["attention"]),  # the model's modules in one graph
        ("kernel", True, ["attention", "mamba2", "mlp"]),
        ("sdpa", True, ["attention", "mamba2", "mlp"]),  # the reference mode: not captured, not fused
    ],
)
def test_graphed_decode_matches_eager(layers: list[str], mode: str, fuse: bool) -> None:
    model = olmo_like(layers * 2)
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    engine = DecodeEngine(model, max_context=1024, attention=mode, fuse=fuse)  # type: ignore[arg-type]
    assert engine.graphed == (mode == "kernel") and engine.fused == (fuse and mode == "kernel")
    check_against_eager(model, engine, prompt)


def test_graphed_decode_with_gemv_matches_eager() -> None:
    """Every matmul of the fused step through kernels.gemv (Triton) instead of cuBLAS."""
    model = olmo_like(["gated_deltanet"] * 3 + ["attention"])
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    engine = DecodeEngine(model, max_context=1024, gemv=True)
    assert engine.graphed and engine.fused and engine.gemv_roles == GEMV_ROLES
    check_against_eager(model, engine, prompt)


def mla_stack() -> HybridLM:
    """Mamba-2 + MLA (DeepSeek-V3's per-head sizes: latent 512, RoPE key 64, 128 + 128 per head)."""
    cfg = HybridConfig.model_validate(
        {"vocab_size": 4096, "d_model": 1024, "layer_types": ["mamba2", "mamba2", "mla"] * 2,
         "init_std": 0.05,
         "mla": {"n_heads": 8, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                 "v_head_dim": 128}}
    )  # fmt: skip
    torch.manual_seed(0)
    return HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("fuse", [True, False])
def test_graphed_mla_decode_matches_eager(fuse: bool) -> None:
    """MLA's absorbed step over the latent cache (kernels.mla_decode) inside the one-graph step."""
    model = mla_stack()
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    engine = DecodeEngine(model, max_context=1024, fuse=fuse)
    assert engine.graphed and engine.attention == "kernel"
    check_against_eager(model, engine, prompt)


MOE_CASES = {
    # Qwen3.5-MoE-like: softmax router, SwiGLU experts, gated shared expert
    "swiglu": {"n_experts": 64, "top_k": 8, "hidden_dim": 256, "shared_hidden_dim": 512, "shared_gate": True},
    # Nemotron-H-like: sigmoid scores, choice bias, groups, relu2 experts, router in fp32
    "relu2": {"n_experts": 32, "top_k": 4, "hidden_dim": 384, "shared_hidden_dim": 512,
              "scoring": "sigmoid", "score_bias": True, "n_groups": 4, "topk_groups": 2,
              "routed_scaling": 2.5, "router_fp32": True},
}  # fmt: skip


def check_moe_against_eager(model: HybridLM, engine: DecodeEngine, prompt: torch.Tensor) -> None:
    """Teacher-forced against the eager path in bf16, with room for routing flips: where two experts'
    scores are within bf16 noise of each other the two paths may choose differently, which changes that
    expert's whole share of the output (not a rounding-sized change), and the changed recurrent state
    carries the difference into every later step. So the check runs 8 short decodes (prefill, then 8
    steps) from 8 prompts rather than one long one, a flip spoils at most the rest of its own short run,
    and most steps, not every one, must agree within the rounding bound and on the argmax. (One 128-step
    run of the Qwen3.5-MoE case on the H100 left the bound for good after a flip near step 43.) A graph
    that replayed stale expert ids would miss on most steps; exactness is the fp32 test's job
    (`test_graphed_moe_decode_matches_eager_in_fp32`: every step within 1e-3)."""
    gen = torch.Generator("cuda").manual_seed(int(prompt[0, 0]))
    V = model.config.vocab_size
    prompts = [prompt] + [torch.randint(0, V, prompt.shape, device="cuda", generator=gen) for _ in range(7)]
    close, same = [], []
    for p in prompts:
        state = model.new_state()
        logits = prefill(model, p, state)[0].float()
        want, eager = [], []
        for _ in range(9):
            eager.append(logits)
            want.append(int(logits.argmax()))
            logits = model(torch.tensor([[want[-1]]], device="cuda"), state)[0, -1].float()
        forced = [engine.prefill(p)[0].float().clone()]
        forced += [engine.step(t)[0].float().clone() for t in want[:-1]]
        for e, x in zip(eager, forced, strict=True):
            close.append(float((e - x).abs().max()) <= 0.05 * float(e.abs().max()))
            same.append(int(e.argmax()) == int(x.argmax()))
        engine.reset()
    assert sum(close) >= 0.8 * len(close), (
        f"{len(close) - sum(close)} of {len(close)} steps outside the bound: {close}"
    )
    assert sum(same) >= 0.8 * len(same), f"argmax differs at {len(same) - sum(same)} of {len(same)} steps"


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_graphed_moe_decode_matches_eager(case: str) -> None:
    """MoE feed-forwards in the captured step: kernels.moe_gemv reads the chosen experts on the device;
    the prompt's prefill runs kernels.moe_grouped_gemm (`check_moe_against_eager`)."""
    layers = ["gated_deltanet", "attention"] if case == "swiglu" else ["mamba2", "attention", "mlp"]
    cfg = HybridConfig.from_name(
        "olmo-hybrid-7b", d_model=1024, layer_types=layers * 2, vocab_size=4096, moe=MOE_CASES[case],
        mlp={"activation": case},
    )  # fmt: skip
    cfg = cfg.model_copy(update={"init_std": 0.05})
    torch.manual_seed(0)
    model = HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    engine = DecodeEngine(model, max_context=1024)
    assert engine.graphed and engine.fused
    check_moe_against_eager(model, engine, prompt)


def qwen3_5_like(moe: bool) -> HybridLM:
    """Qwen3.5's layers through the qwen3_5 adapter's config (model/checkpoints/qwen3_5.py) at a small
    width: 3 Gated DeltaNet : 1 gated attention (heads of 256 with a quarter rotated, per-head QK-norm,
    GQA 8 / 2, the output gate), GDN value heads twice the key heads; with `moe`, 32 experts top 4 and
    a gated shared expert (the gathered decode path inside the graph)."""
    from hybrid_agent.model.checkpoints import qwen3_5

    text = {
        "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 256, "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "intermediate_size": 2048, "vocab_size": 4096, "rope_theta": 1e7,
    }  # fmt: skip
    if moe:
        text |= {"num_experts": 32, "num_experts_per_tok": 4, "moe_intermediate_size": 256,
                 "shared_expert_intermediate_size": 256}  # fmt: skip
    cfg = qwen3_5.config_from_text(text, tie=False, moe={"norm_topk_prob": True})
    cfg = cfg.model_copy(update={"init_std": 0.05})
    assert cfg.attention.output_gate and cfg.attention.rope_fraction == 0.25
    torch.manual_seed(0)
    return HybridLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("fuse", [True, False])
def test_graphed_qwen3_5_decode_matches_eager(moe: bool, fuse: bool) -> None:
    """Qwen3.5's layers in the one-graph step: fused, the stacked projections through kernels.gemv,
    kernels.attn_decode_prep with partial RoPE, the output gate inside kernels.attention_decode."""
    model = qwen3_5_like(moe)
    assert model.layers[3].mixer.rope_dim == 64
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    engine = DecodeEngine(model, max_context=1024, fuse=fuse)
    assert engine.graphed and engine.fused == fuse
    if moe:  # routing flips at bf16 near-ties (the strict check of the MoE path runs in fp32, below)
        check_moe_against_eager(model, engine, prompt)
    else:
        check_against_eager(model, engine, prompt)


@pytest.mark.parametrize("case", ["qwen3_5", *MOE_CASES])
def test_graphed_moe_decode_matches_eager_in_fp32(case: str) -> None:
    """The MoE engine paths in fp32, where routing near-ties are ~2^16 times rarer than in bf16: every
    teacher-forced step within 1e-3 of the eager logits' maximum, so a wrong expert read or a stale id in
    the graph fails at once (the bf16 tests above leave room for routing flips)."""
    if case == "qwen3_5":
        model = qwen3_5_like(True).float()
    else:  # (the chunked GDN kernel at OLMo's heads does not fit shared memory in fp32: Mamba-2 here)
        layers = ["mamba2", "attention"] if case == "swiglu" else ["mamba2", "attention", "mlp"]
        cfg = HybridConfig.from_name(
            "olmo-hybrid-7b", d_model=1024, layer_types=layers * 2, vocab_size=4096, moe=MOE_CASES[case],
            mlp={"activation": case},
        )  # fmt: skip
        torch.manual_seed(0)
        model = HybridLM(cfg.model_copy(update={"init_std": 0.05})).to(device="cuda").eval()
    prompt = torch.randint(0, 4096, (1, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    engine = DecodeEngine(model, max_context=1024)
    state = model.new_state()
    logits = prefill(model, prompt, state)[0].float()
    eager, want = [], []
    for _ in range(64):
        eager.append(logits)
        want.append(int(logits.argmax()))
        logits = model(torch.tensor([[want[-1]]], device="cuda"), state)[0, -1].float()
    forced = [engine.prefill(prompt)[0].float().clone()]
    forced += [engine.step(t)[0].float().clone() for t in want[:-1]]
    bad = [
        (i, float((e - x).abs().max()) / float(e.abs().max()))
        for i, (e, x) in enumerate(zip(eager, forced, strict=True))
        if float((e - x).abs().max()) > 1e-3 * float(e.abs().max())
    ]
    assert not bad, f"{len(bad)} of {len(eager)} steps outside 1e-3 (step, relative): {bad[:8]}"
