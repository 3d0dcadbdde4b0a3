"""The mixture-of-experts feed-forward (model/moe.py): both ways of applying the experts compute the
plain definition (every token through its top-k experts, weighted), for each routing option; a block
uses it where `moe.layers` says; the decode-sized call reads nothing back to the host."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.model import HybridConfig
from hybrid_agent.model import moe as moe_module
from hybrid_agent.model.errors import ConfigError
from hybrid_agent.model.moe import MoE
from hybrid_agent.model.ops import Ops
from hybrid_agent.model.testing import tiny_model

BASE = {"n_experts": 6, "top_k": 2, "hidden_dim": 24}


def moe(seed: int = 0, activation: str = "swiglu", bias: bool = False, **over: object) -> MoE:
    mlp = {"activation": activation, "bias": bias}
    cfg = HybridConfig(vocab_size=50, d_model=16, layer_types=["mlp"], mlp=mlp, moe={**BASE, **over})
    torch.manual_seed(seed)
    m = MoE(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.3)
    return m


def reference(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """The definition, one token and one chosen expert at a time; groups and the choice bias as plain
    Python over the experts; with a latent space the experts read latent_in(x) and their weighted sum
    goes through latent_out."""
    out = torch.zeros_like(x)
    E, size = m.n_experts, m.n_experts // m.n_groups
    for n, tok in enumerate(x):
        logits = m.router.weight @ tok
        scores = logits.softmax(-1) if m.scoring == "softmax" else logits.sigmoid()
        choice = scores.tolist() if m.score_bias is None else (scores + m.score_bias).tolist()
        group_score = [sum(sorted(choice[g * size : (g + 1) * size])[-2:]) for g in range(m.n_groups)]
        groups = sorted(range(m.n_groups), key=lambda g: -group_score[g])[: m.topk_groups]
        allowed = [e for e in range(E) if e // size in groups]
        ids = sorted(allowed, key=lambda e: -choice[e])[: m.top_k]
        w = scores[ids]
        if m.norm_topk_prob:
            w = w / w.sum()
        xe = tok if m.latent_in is None else m.latent_in(tok)
        routed = torch.zeros_like(xe)
        for weight, e in zip(w * m.routed_scaling, ids, strict=True):
            u, d = m.experts.up_proj[e], m.experts.down_proj[e]
            if m.experts.gate_proj is None:
                h = F.relu(u @ xe).square()
            else:
                h = F.silu(m.experts.gate_proj[e] @ xe) * (u @ xe)
            routed += weight * (d @ h)
        out[n] += routed if m.latent_out is None else m.latent_out(routed)
        if m.shared_expert is not None:
            s = m.shared_expert(tok)
            if m.shared_expert_gate is not None:
                s = torch.sigmoid(m.shared_expert_gate.weight @ tok) * s
            out[n] += s
    return out


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"scoring": "sigmoid", "norm_topk_prob": False, "routed_scaling": 2.5},
        {"shared_hidden_dim": 20, "shared_gate": True},
        {"shared_hidden_dim": 20, "top_k": 1},
        # DeepSeek-V3 / Nemotron-H selection: a choice-only bias, best 2 of 3 groups, relu2 experts
        {
            "scoring": "sigmoid",
            "score_bias": True,
            "n_groups": 3,
            "topk_groups": 2,
            "routed_scaling": 2.5,
            "shared_hidden_dim": 20,
            "activation": "relu2",
        },
        {"scoring": "sigmoid", "score_bias": True, "norm_topk_prob": False},  # LFM2-MoE: bias, no groups
        {"n_groups": 2, "topk_groups": 1, "top_k": 3},  # every chosen expert from the one best group
        # Nemotron 3 Super: relu2 experts in a latent space of 8 (of d_model 16), with and without biases
        {
            "scoring": "sigmoid",
            "score_bias": True,
            "n_groups": 3,
            "topk_groups": 2,
            "routed_scaling": 2.5,
            "shared_hidden_dim": 20,
            "activation": "relu2",
            "latent_dim": 8,
            "router_fp32": True,
        },
        {
            "scoring": "sigmoid",
            "shared_hidden_dim": 20,
            "activation": "relu2",
            "latent_dim": 12,
            "bias": True,
        },
        {"latent_dim": 8},  # SwiGLU experts, no shared expert
    ],
)
@pytest.mark.parametrize("tokens", [1, 3, 11])  # 1, 3: gathered (N * k <= E); 11: by expert
def test_forward_is_the_definition(over: dict, tokens: int) -> None:
    m = moe(**over)
    x = torch.randn(1, tokens, 16, generator=torch.Generator().manual_seed(tokens))
    got = m(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got[0], reference(m, x[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("over", [{}, {"latent_dim": 8, "shared_hidden_dim": 20, "activation": "relu2"}])
def test_decode_sized_call_reads_nothing_back(monkeypatch: pytest.MonkeyPatch, over: dict) -> None:
    """One token takes the gathered path: no `.tolist()` host read (a CUDA graph can capture it)."""
    m = moe(**over)
    monkeypatch.setattr(moe_module, "moe_grouped_gemm", lambda *a: pytest.fail("host-read path on one token"))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda *a: pytest.fail("host read"))
    monkeypatch.setattr(torch.Tensor, "item", lambda *a: pytest.fail("host read"))
    m(torch.randn(1, 1, 16))


def test_blocks_use_moe_where_the_config_says() -> None:
    model = tiny_model(["mlp", "attention", "mlp"], moe={**BASE, "layers": [1]})
    assert [type(b.mlp).__name__ for b in model.layers] == ["MLP", "MoE", "MLP"]
    every = tiny_model(["mlp", "attention"], moe=BASE)
    assert all(type(b.mlp).__name__ == "MoE" for b in every.layers)
    assert every.config.moe.hidden_dim == 24
    state = every.new_state()
    assert every(torch.tensor([[1, 2, 3]]), state).shape[1] == 3


def test_score_bias_changes_the_choice_not_the_weights() -> None:
    """A large bias on one expert makes every token choose it, weighted by its unbiased score."""
    m = moe(scoring="sigmoid", score_bias=True, norm_topk_prob=False, top_k=1)
    with torch.no_grad():
        m.score_bias.zero_()[4] = 10.0
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    weights, ids = m.route(logits)
    assert ids.flatten().tolist() == [4] * 5
    torch.testing.assert_close(weights[:, 0], logits[:, 4].sigmoid())


def test_score_bias_stays_fp32_when_the_model_is_cast() -> None:
    m = moe(scoring="sigmoid", score_bias=True).to(torch.bfloat16)
    assert m.router.weight.dtype == torch.bfloat16 and m.score_bias.dtype == torch.float32
    x = torch.randn(1, 3, 16, dtype=torch.bfloat16)
    assert m(x).dtype == torch.bfloat16


def test_relu2_experts_have_no_gate() -> None:
    m = moe(activation="relu2", shared_hidden_dim=20)
    assert m.experts.gate_proj is None and m.shared_expert.gate_proj is None
    assert "experts.gate_proj" not in m.state_dict()


@pytest.mark.parametrize(
    "over, match",
    [
        ({"top_k": 7}, "top_k"),
        ({"layers": [3]}, "outside"),
        ({"n_groups": 4}, "split"),
        ({"n_groups": 3, "topk_groups": 4}, "topk_groups"),
        ({"n_groups": 3, "topk_groups": 1, "top_k": 3}, "topk_groups=1 groups"),
    ],
)
def test_bad_moe_configs_say_what_to_fix(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HybridConfig(vocab_size=50, d_model=16, layer_types=["mlp"], moe={**BASE, **over})


def test_router_fp32_keeps_the_router_in_fp32() -> None:
    """`router_fp32` (Nemotron-H, Kimi Linear): the router weight survives a bf16 cast and multiplies x
    in fp32; the experts are bf16."""
    m = moe(router_fp32=True, scoring="sigmoid", score_bias=True).to(torch.bfloat16)
    assert m.router.weight.dtype == torch.float32 and m.experts.up_proj.dtype == torch.bfloat16
    x = torch.randn(3, 16).bfloat16()
    logits = m.logits(x, Ops())
    assert logits.dtype == torch.float32 and torch.equal(logits, F.linear(x.float(), m.router.weight))
    assert m(x[None]).dtype == torch.bfloat16
    plain = moe().to(torch.bfloat16)
    assert plain.router.weight.dtype == torch.bfloat16 and plain.logits(x, Ops()).dtype == torch.bfloat16


@pytest.mark.parametrize("tokens", [1, 11])  # moe_gemv, moe_grouped_gemm
@pytest.mark.parametrize("activation", ["swiglu", "relu2"])
@pytest.mark.parametrize("latent", [0, 8])  # the experts in the model's width or a latent space
def test_triton_experts_match_the_reference(
    monkeypatch: pytest.MonkeyPatch, tokens: int, activation: str, latent: int
) -> None:
    """The forward through the Triton kernels (the interpreter here, CUDA on the device) equals the
    reference kernels' forward."""
    if not torch.cuda.is_available() and not interpreter_on():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = moe(activation=activation, shared_hidden_dim=20, latent_dim=latent).to(dev)
    x = torch.randn(1, tokens, 16, generator=torch.Generator().manual_seed(3)).to(dev)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "ref")
    want = m(x)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "triton")
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
