"""The one-token CPU path of decode (kernels mode `auto`: the kernels' `*_cpu` forms; model/layers.py)
against the reference kernels through the modules' `forward`,
for every layer option the path handles itself or hands back: the same logits and the same state
afterwards, bit for bit."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
from hybrid_agent.kernels.rms_norm import rms_norm_cpu, rms_norm_ref
from hybrid_agent.model import HybridLM


def _run(
    model: HybridLM, ids: torch.Tensor, prefill: int, **state_kw: object
) -> tuple[list[torch.Tensor], dict]:
    """Prefill ids[:, :prefill], then one call per remaining token; the logits of every call and the
    final state's tensors."""
    state = model.new_state(ids.shape[0], **state_kw)
    outs = [model(ids[:, :prefill], state)[:, -1]]
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t : t + 1], state)[:, -1])  # (B, V)
    return outs, state.to_tensors()


def _check_paths(
    model: HybridLM, monkeypatch: pytest.MonkeyPatch, *, batch: int = 1, prefill: int = 9, steps: int = 12,
    **state_kw: object,
) -> None:  # fmt: skip
    """The one-token path (kernels `auto`) against the reference kernels through the
    modules' `forward`: every logit and every state tensor bit for bit."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, model.config.vocab_size, (batch, prefill + steps), generator=gen)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "ref")
    ref, ref_state = _run(model, ids, prefill, **state_kw)
    monkeypatch.setenv("HYBRID_AGENT_KERNELS", "auto")
    fast, fast_state = _run(model, ids, prefill, **state_kw)
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        assert torch.equal(a, b), f"call {i}: logits differ by {float((a - b).abs().max()):.2e}"
    assert fast_state.keys() == ref_state.keys()
    for name, t in ref_state.items():
        assert torch.equal(fast_state[name], t), name


@pytest.mark.parametrize(
    "attention",
    [
        {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},  # grouped-query, full RoPE
        {"n_heads": 4, "n_kv_heads": 4, "head_dim": 8, "bias": True},  # one query head per KV head
        {"n_heads": 4, "n_kv_heads": 1, "head_dim": 8, "rope_fraction": 0.5},  # partial RoPE
        {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "rope_theta": None},  # NoPE: the generic forward
        {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "qk_norm": "head"},  # QK-norm: the generic forward
    ],
    ids=["gqa", "mha-bias", "partial-rope", "nope", "qk-norm"],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_attention_step(make_model: Callable[..., HybridLM], monkeypatch, attention, batch) -> None:
    model = make_model(["attention", "mlp", "attention"], seed=1, attention=attention)
    # 58 + 12 tokens: the RoPE table of 64 positions is refilled mid-decode
    _check_paths(model, monkeypatch, batch=batch, prefill=58)


def test_attention_step_with_window_uses_the_generic_forward(make_model, monkeypatch) -> None:
    model = make_model(["attention", "mamba2"], seed=2)
    _check_paths(model, monkeypatch, prefill=5, steps=14, window=6, sinks=2)


@pytest.mark.parametrize(
    "mamba2",
    [
        {"head_dim": 8, "d_state": 8},
        {"head_dim": 8, "d_state": 8, "n_groups": 2, "conv_bias": False, "bias": True},  # grouped norm
        {"head_dim": 8, "d_state": 8, "dt_limit": (0.01, 0.2)},
        {"head_dim": 8, "d_state": 8, "gated_norm": False},
        {"head_dim": 8, "d_state": 8, "norm_before_gate": True},
        {"head_dim": 8, "d_state": 8, "norm_position": "post"},  # post-norm blocks: the generic forward
    ],
    ids=["default", "groups-bias", "dt-limit", "no-norm", "norm-first", "post-norm"],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_mamba2_step(make_model, monkeypatch, mamba2, batch) -> None:
    model = make_model(["mamba2", "mamba2"], seed=3, mamba2=mamba2)
    _check_paths(model, monkeypatch, batch=batch)


def test_mixed_model_and_relu2_mlp(make_model, monkeypatch) -> None:
    kinds = ["mamba2", "attention", "gated_deltanet", "parallel", "mla", "mlp"]
    _check_paths(make_model(kinds, seed=4), monkeypatch)
    _check_paths(
        make_model(["mamba2", "mlp"], seed=4, mlp={"hidden_dim": 64, "activation": "relu2"}), monkeypatch
    )


def test_new_weights_reach_the_step(make_model, monkeypatch) -> None:
    """The stacked q/k/v weight is a copy: loading other weights must rebuild it."""
    model = make_model(["attention", "mamba2"], seed=6)
    other = make_model(["attention", "mamba2"], seed=7)
    _check_paths(model, monkeypatch)  # builds the stacked weight of `model`
    model.load_state_dict(other.state_dict())
    _check_paths(model, monkeypatch)
    with torch.no_grad():
        model.layers[0].mixer.k_proj.weight.mul_(2.0)  # in place: the same storage, a new version
    _check_paths(model, monkeypatch)


def test_decode_runs_the_cpu_kernels(make_model, monkeypatch) -> None:
    """The checks above compare the CPU kernels with the reference, not the reference twice: a mistake
    of one part in a million in a CPU kernel is seen."""
    model = make_model(["attention", "mamba2"], seed=8)
    ssm_step_module = importlib.import_module("hybrid_agent.kernels.ssm_step")  # the package's name is the op
    real_step = ssm_step_module.ssm_step_cpu
    monkeypatch.setattr(  # the CPU form only: the reference path keeps the true numbers
        ssm_step_module, "ssm_step_cpu", lambda *a, **k: real_step(*a, **k) * (1 + 1e-6)
    )
    with pytest.raises(AssertionError, match="logits differ"):
        _check_paths(model, monkeypatch)


@pytest.mark.parametrize("shape", [(1, 1, 384), (1, 768), (1, 1, 64), (32,)])
def test_rms_norm_cpu(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x, w = torch.randn(shape, generator=gen) * 3, torch.randn(shape[-1], generator=gen)
    assert torch.equal(rms_norm_cpu(x, w, 1e-5), rms_norm_ref(x, w, 1e-5))
