"""DecodeEngine(gemv=...): the fused step's one-token matmuls through kernels.gemv's Triton kernel (on
the CPU under TRITON_INTERPRET=1, set by tests/conftest.py) give the logits and greedy tokens of the
same engine with gemv=False (F.linear), fp32, OLMo Hybrid's block forms (GDN, post-norm attention with
full QK norm, SwiGLU MLPs, an untied head) at toy sizes."""

from __future__ import annotations

import sys

import pytest
import torch
from hybrid_agent.kernels import GemvConfig
from hybrid_agent.kernels._dispatch import interpreter_on
from hybrid_agent.model import HybridConfig, HybridLM
from hybrid_agent.model.decode.engine import GEMV_ROLES, DecodeEngine

CFG = dict(
    vocab_size=97,
    d_model=32,
    layer_types=["gated_deltanet", "attention", "gated_deltanet"],
    attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "qk_norm": "full", "norm_position": "post"},
    gated_deltanet={"n_heads": 2, "n_v_heads": 4, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8,
                    "allow_neg_eigval": True},
    mlp={"hidden_dim": 64},
    init_std=0.3,
)  # fmt: skip


@pytest.fixture
def triton_gemv(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], str]:
    """kernels.gemv runs its Triton kernel (only it: on the CPU the other ops keep their CPU paths);
    returns a list that counts the kernel's calls, so the test knows the engine really went through it,
    and the device to run on (CUDA where there is one: Triton cannot launch on CPU tensors there)."""
    cuda = torch.cuda.is_available() and not interpreter_on()
    if not interpreter_on() and not cuda:
        pytest.skip("needs TRITON_INTERPRET=1 set before Triton is imported")
    import hybrid_agent.kernels.triton_gemv as tg

    mod = sys.modules["hybrid_agent.kernels.gemv"]
    calls: list[int] = []
    real = tg.gemv_triton

    def counted(*a: object, **k: object) -> torch.Tensor:
        calls.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    if not cuda:
        monkeypatch.setattr(mod, "use_triton", lambda x: True)
    monkeypatch.setattr(tg, "gemv_triton", counted)
    return calls, "cuda" if cuda else "cpu"


def test_gemv_engine_equals_linear_engine(triton_gemv: tuple[list[int], str]) -> None:
    calls, dev = triton_gemv
    torch.manual_seed(3)
    model = HybridLM(HybridConfig.model_validate(CFG)).eval().to(dev)
    prompt = torch.randint(0, 97, (1, 13), generator=torch.Generator().manual_seed(2)).to(dev)
    # no CUDA graphs: every step calls the kernel from Python, so the calls can be counted
    off = DecodeEngine(model, max_context=40, attention="kernel", gemv=False, use_graphs=False)
    on = DecodeEngine(model, max_context=40, attention="kernel", gemv=True, use_graphs=False)
    assert off.fused and on.fused and on.gemv_roles == GEMV_ROLES and not off.gemv_roles
    a, b = off.prefill(prompt).clone(), on.prefill(prompt).clone()
    assert torch.equal(a, b)  # prefill does not use the gemv (many rows)
    tokens = torch.randint(0, 97, (6,), generator=torch.Generator().manual_seed(4)).tolist()
    # Both sides are fp32 products; only the summation order differs (the GEMV's per-thread partial
    # sums vs cuBLAS's). On an H100 that moved the logits by up to 2.6e-5 after 6 steps (device run
    # s4-2), so CUDA gets 1e-4; a wrong kernel misses by orders of magnitude more.
    tol = 1e-4 if dev == "cuda" else 1e-5
    for i, tok in enumerate(tokens):
        la, lb = off.step(tok).clone(), on.step(tok).clone()
        assert torch.allclose(la, lb, rtol=tol, atol=tol), f"step {i}: {float((la - lb).abs().max())}"
    # per step: 3 MLPs x 2 + 2 GDN x 2 + attention x 2 + head = 13 gemv calls
    assert len(calls) == 13 * len(tokens)
    off.reset(), on.reset()
    off.prefill(prompt), on.prefill(prompt)
    assert off.generate_greedy(6) == on.generate_greedy(6)


def test_gemv_roles_option() -> None:
    torch.manual_seed(0)
    model = HybridLM(HybridConfig.model_validate(CFG)).eval()
    eng = DecodeEngine(model, max_context=16, attention="kernel", gemv={"down", "head"})
    assert eng.gemv_roles == {"down", "head"}
    assert not DecodeEngine(model, max_context=16, attention="kernel").gemv_roles  # CPU default: off
    with pytest.raises(ValueError, match="unknown gemv roles"):
        eng.set_gemv({"lm_head"})


def test_engine_passes_its_gemv_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine.gemv_cfg[(N, K)] is the launch kernels.gemv gets for a weight of that shape (the
    benchmarks' sweeps set it there; kernels.gemv's own table is read-only); other shapes get None."""
    import hybrid_agent.model.decode.ops as engine_module

    model = HybridLM(HybridConfig.model_validate(CFG)).eval()
    eng = DecodeEngine(model, max_context=16, attention="kernel", gemv=True, use_graphs=False)
    seen: list[tuple[tuple[int, ...], GemvConfig | None]] = []

    def record(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, config: GemvConfig | None = None):
        seen.append((tuple(w.shape), config))
        return x @ w.T

    monkeypatch.setattr(engine_module, "gemv_op", record)
    cfg = GemvConfig(8, 32, 2, 4)
    eng.gemv_cfg[(24, 32)] = cfg
    x = torch.randn(1, 32)
    eng.kernels.mm("down", x, torch.randn(24, 32))
    eng.kernels.mm("down", x, torch.randn(16, 32))
    assert seen == [((24, 32), cfg), ((16, 32), None)]
