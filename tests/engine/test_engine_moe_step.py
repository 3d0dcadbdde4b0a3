"""The decode engine's MoE layer step (model/decode/moe_step.py: one stacked matmul, kernels.moe_route,
kernels.moe_gemv with the shared expert in its down launch) against the layer's own forward
(model/moe.py, the definition), for every MoE form the model has: softmax or sigmoid scores, a choice
bias, groups (the model's routing), relu2 experts, a router in fp32, a shared expert with or without its
sigmoid gate, none; a latent space (Nemotron 3 Super), which keeps the layer's own forward. On the CPU
with the torch references and with the Triton kernels under the interpreter; on the device (`gpu`) at
Qwen3.5-35B-A3B's shape inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.kernels.moe_route import moe_route_ref
from hybrid_agent.kernels.testing import rel_err
from hybrid_agent.model.decode import moe_step as step_mod
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.moe import MoE
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.testing import tiny_model

BASE = {"n_experts": 8, "top_k": 2, "hidden_dim": 24, "shared_hidden_dim": 20}
FORMS = {
    "qwen": ({**BASE, "shared_gate": True, "norm_topk_prob": True}, "swiglu"),
    "granite": ({**BASE, "n_experts": 6}, "swiglu"),  # ungated shared expert
    "nemotron": ({**BASE, "scoring": "sigmoid", "score_bias": True, "routed_scaling": 2.5,
                  "router_fp32": True, "norm_topk_prob": True}, "relu2"),
    "kimi": ({**BASE, "scoring": "sigmoid", "score_bias": True, "n_groups": 4, "topk_groups": 2,
              "norm_topk_prob": True}, "swiglu"),
    "no-shared": ({**BASE, "shared_hidden_dim": 0}, "swiglu"),
    # Nemotron 3 Super: the routed experts in a latent space; the layer's own forward with the engine's ops
    "nemotron-latent": ({**BASE, "scoring": "sigmoid", "score_bias": True, "routed_scaling": 2.5,
                         "router_fp32": True, "latent_dim": 12}, "relu2"),
}  # fmt: skip


def moe_model(form: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> HybridLM:
    moe, act = FORMS[form]
    model = tiny_model(
        ["mlp", "attention", "mlp"], seed=2, moe=moe, mlp={"hidden_dim": 64, "activation": act}
    )
    model = model.to(device=device, dtype=dtype)
    for block in model.layers:  # a choice bias that matters
        if isinstance(block.mlp, MoE) and block.mlp.score_bias is not None:
            with torch.no_grad():
                block.mlp.score_bias.normal_(std=0.05)
    return model


def layers_against_forward(model: HybridLM, engine: DecodeEngine, n: int, tol: float) -> int:
    """Every MoE layer on n random tokens through the engine's ops (fused step) and through its own
    forward; returns how many layers took the fused step."""
    calls = []
    real = step_mod.moe_route
    step_mod.moe_route = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        for i, block in enumerate(model.layers):
            if not isinstance(block.mlp, MoE):
                continue
            g = torch.Generator().manual_seed(i)
            x = torch.randn(n, 1, model.config.d_model, generator=g).to(model.device, model.dtype)
            got, want = block.mlp(x, engine.ops), block.mlp(x)
            assert got.shape == want.shape and got.dtype == want.dtype
            assert rel_err(got.float(), want.float()) < tol, i
    finally:
        step_mod.moe_route = real
    return len(calls)


@pytest.mark.parametrize("form", list(FORMS))
def test_fused_moe_step_matches_the_layer(form: str) -> None:
    model = moe_model(form)
    engine = DecodeEngine(model, max_context=16, attention="kernel", batch_size=2)
    assert engine.fused and engine.moe_fused
    own = FORMS[form][0].get("n_groups", 1) > 1 or FORMS[form][0].get("latent_dim", 0) > 0
    n_moe = sum(isinstance(b.mlp, MoE) for b in model.layers)
    assert n_moe == 3 and layers_against_forward(model, engine, 2, 1e-5) == (0 if own else n_moe)
    engine.moe_fused = False  # the same-run baseline: the layer's own forward with the engine's ops
    assert layers_against_forward(model, engine, 2, 1e-5) == 0


def test_fused_moe_step_with_triton_kernels(monkeypatch) -> None:
    """The same with the Triton kernels (the interpreter on the CPU): route and experts + shared."""
    if not (torch.cuda.is_available() or interpreter_on()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before Triton is imported")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    for form in ("qwen", "nemotron"):
        model = moe_model(form, device=dev)
        engine = DecodeEngine(model, max_context=8, attention="kernel", use_graphs=False)
        assert layers_against_forward(model, engine, 1, 2e-5) == 3


@pytest.mark.parametrize("form", ["qwen", "nemotron", "nemotron-latent"])
def test_engine_decode_with_fused_moe_matches_eager(form: str) -> None:
    """Whole steps: the fused engine's logits against model forward, and greedy tokens the same."""
    model = moe_model(form)
    prompt = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(3))
    state = model.new_state()
    want = [model(prompt, state)[0, -1]]
    tokens = [int(want[-1].argmax())]
    for _ in range(6):
        want.append(model(torch.tensor([[tokens[-1]]]), state)[0, -1])
        tokens.append(int(want[-1].argmax()))
    engine = DecodeEngine(model, max_context=32, attention="kernel")
    assert engine.fused and engine.moe_fused
    engine.prefill(prompt)
    for i, tok in enumerate(tokens[:-1]):
        got = engine.step(tok)[0]
        assert torch.allclose(got, want[i + 1], rtol=1e-4, atol=1e-4), i


def test_stacked_weights_are_the_models() -> None:
    """plan_concat stacks router | shared gate | shared up | shared-expert gate once; the shared gate|up
    entry (the layer's own forward with the engine's ops) is a view of those rows."""
    model = moe_model("qwen")
    engine = DecodeEngine(model, max_context=8, attention="kernel")
    moe = model.layers[0].mlp
    s = moe.shared_expert
    w = engine.stacked_weight(step_mod.input_linears(moe))
    assert w is not None and w.shape == (8 + 2 * 20 + 1, 32)
    want = torch.cat([moe.router.weight, s.gate_proj.weight, s.up_proj.weight, moe.shared_expert_gate.weight])
    assert torch.equal(w, want)
    pair = engine.stacked_weight([s.gate_proj, s.up_proj])
    assert pair is not None and pair.data_ptr() == w[8:].data_ptr() and pair.shape == (40, 32)


@pytest.mark.parametrize("form", [f for f in FORMS if FORMS[f][0].get("n_groups", 1) == 1])
def test_route_reference_is_the_models_routing(form: str) -> None:
    """kernels.moe_route's reference is exactly `MoE.route` (then cast) for the ungrouped forms."""
    moe = moe_model(form).layers[0].mlp
    logits = torch.randn(5, moe.n_experts, generator=torch.Generator().manual_seed(1)) * 2
    w, ids = moe.route(logits)
    got_w, got_ids = moe_route_ref(
        logits, moe.top_k, scoring=moe.scoring, bias=moe.score_bias, norm=moe.norm_topk_prob,
        scaling=moe.routed_scaling,
    )  # fmt: skip
    assert torch.equal(got_ids, ids) and torch.equal(got_w, w)


# ---- on the device: Qwen3.5-35B-A3B's MoE layer in a CUDA graph


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 4])
def test_fused_moe_step_real_shape_in_a_graph_gpu(monkeypatch, dtype: torch.dtype, n: int) -> None:
    """hidden 2048, 256 experts top 8 of 512, gated shared expert of 512: the fused step captured in a
    CUDA graph and replayed on new tokens, against the layer's own forward. fp32: within 1e-4; bf16: the
    tokens whose chosen experts agree (routing near-ties may flip) within the rounding bound."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    from hybrid_agent.model.config import HybridConfig

    moe = {"n_experts": 256, "top_k": 8, "hidden_dim": 512, "shared_hidden_dim": 512, "shared_gate": True,
           "norm_topk_prob": True}  # fmt: skip
    cfg = HybridConfig(vocab_size=64, d_model=2048, layer_types=["mlp"], moe=moe, init_std=2048**-0.5)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = HybridLM(cfg).to(dtype).eval()
    engine = DecodeEngine(model, max_context=4, batch_size=n, attention="kernel", use_graphs=False)
    layer = model.layers[0].mlp
    x = torch.randn(n, 1, 2048, device="cuda", dtype=dtype)
    with torch.inference_mode():
        layer(x, engine.ops)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(x, engine.ops)
        compared = 0
        for seed in range(3):
            x.copy_(
                torch.randn(n, 1, 2048, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            )
            graph.replay()
            want = layer(x)
            if dtype == torch.float32:
                assert rel_err(out, want) < 1e-4
                continue
            flat = x.view(n, -1)
            stacked = engine.ops.project("gate_up", flat, step_mod.input_linears(layer))
            fused_ids = layer.route(stacked[:, :256])[1].sort(-1).values  # the fused step's choice
            own_ids = layer.route(layer.logits(flat, Ops()))[1].sort(-1).values  # the forward's
            for t in range(n):
                if torch.equal(fused_ids[t], own_ids[t]):
                    compared += 1
                    assert rel_err(out[t], want[t]) < 2e-2, (seed, t)
    assert dtype == torch.float32 or compared >= 2 * n  # most tokens choose alike


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 4])
def test_latent_moe_layer_in_a_graph_gpu(monkeypatch, n: int) -> None:
    """A layer with a latent space (hidden 4096, latent 1024, 128 relu2 experts top 8 of 1024, shared
    expert of 2048, router in fp32): its own forward with the engine's ops (kernels.gemv for the latent
    projections, kernels.moe_gemv in the latent space) captured in a CUDA graph and replayed on new tokens,
    fp32, within 1e-4 of the eager forward."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    from hybrid_agent.model.config import HybridConfig

    moe = {"n_experts": 128, "top_k": 8, "hidden_dim": 1024, "shared_hidden_dim": 2048, "latent_dim": 1024,
           "scoring": "sigmoid", "score_bias": True, "router_fp32": True, "routed_scaling": 2.5}  # fmt: skip
    cfg = HybridConfig(
        vocab_size=64, d_model=4096, layer_types=["mlp"], moe=moe, mlp={"activation": "relu2"},
        init_std=4096**-0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = HybridLM(cfg).eval()
    engine = DecodeEngine(model, max_context=4, batch_size=n, attention="kernel", use_graphs=False)
    layer = model.layers[0].mlp
    assert not step_mod.fusable(layer)
    x = torch.randn(n, 1, 4096, device="cuda")
    with torch.inference_mode():
        layer(x, engine.ops)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(x, engine.ops)
        for seed in range(3):
            x.copy_(
                torch.randn(n, 1, 4096, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            )
            graph.replay()
            assert rel_err(out, layer(x)) < 1e-4, seed
