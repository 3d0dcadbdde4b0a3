"""The CPU fast path of decode (mode `auto`: `ssm_step_cpu` and the model's one-token path, see
model/layers.py) against the reference kernels (`HYBRID_AGENT_KERNELS=ref`): the same greedy tokens
and the same logits bit for bit, token by token. tests/model/test_model_decode_cpu.py checks each
layer option of the one-token path, and the states."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hybrid_agent.kernels.ssm_step import ssm_step_cpu, ssm_step_ref
from hybrid_agent.model import HybridLM

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "model" / "default"


@pytest.mark.parametrize(("h", "g"), [(4, 1), (4, 2), (6, 6), (12, 1)])
@pytest.mark.parametrize("with_d", [True, False])
@pytest.mark.parametrize("b", [1, 2])  # 1: one sequence, as in decode
def test_ssm_step_cpu_equals_ref(h: int, g: int, with_d: bool, b: int) -> None:
    torch.manual_seed(h * 10 + g)
    p, n = 8, 16
    state = torch.randn(b, h, p, n)
    x, dt = torch.randn(b, h, p), torch.rand(b, h) * 0.5 + 0.01
    A, B, C = -torch.rand(h) * 4, torch.randn(b, g, n), torch.randn(b, g, n)
    D = torch.randn(h) if with_d else None
    s_ref, s_fast = state.clone(), state.clone()
    for _ in range(3):  # the state carries over
        y_ref = ssm_step_ref(s_ref, x, dt, A, B, C, D=D)
        y_fast = ssm_step_cpu(s_fast, x, dt, A, B, C, D=D)
        torch.testing.assert_close(y_fast, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s_fast, s_ref, rtol=1e-6, atol=1e-6)


def _decode(model: HybridLM, prompt: list[int], n: int) -> tuple[list[torch.Tensor], list[int]]:
    """Greedy: prefill `prompt`, then `n` one-token calls; the logits of every call and the tokens."""
    state = model.new_state()
    logits = model(torch.tensor([prompt]), state)[:, -1]  # (1, V)
    outs, toks = [logits], []
    for _ in range(n):
        tok = int(logits.argmax(-1))
        toks.append(tok)
        logits = model(torch.tensor([[tok]]), state)[:, -1]
        outs.append(logits)
    return outs, toks


def _compare(model: HybridLM, prompt: list[int], n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "ref")
    ref, ref_toks = _decode(model, prompt, n)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    fast, fast_toks = _decode(model, prompt, n)
    assert fast_toks == ref_toks
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        assert torch.equal(a, b), f"call {i}: logits differ by {float((a - b).abs().max()):.2e}"


def test_tiny_hybrid_decode_fast_equals_ref(
    make_model: Callable[..., HybridLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(["mamba2", "attention", "mamba2", "gated_deltanet", "mlp"], seed=3)
    _compare(model, list(range(1, 20)), 24, monkeypatch)


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").is_file(), reason="no model/default")
def test_default_model_decode_fast_equals_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HybridLM.from_pretrained(DEFAULT_DIR, device="cpu")
    assert model.dtype == torch.float32  # the one-token CPU path is fp32's
    torch.manual_seed(0)
    _compare(model, torch.randint(0, model.config.vocab_size, (16,)).tolist(), 40, monkeypatch)
