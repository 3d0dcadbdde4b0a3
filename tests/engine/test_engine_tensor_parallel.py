"""The DecodeEngine at tp=2 (model/decode/step.py with model/parallel.py): gloo ranks as threads of this
process on the CPU (the step uncaptured), two GPUs over NCCL with the step captured as one CUDA graph.
Each rank's engine gives the tp=1 engine's logits (to fp32 rounding) and greedy tokens, which are the
model's own forward's; its state gathered into the full layout resumes on a tp=1 engine with the same
tokens, and split again it is the rank's state exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model import HybridLM
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.parallel import TensorParallel, launch
from hybrid_agent.model.sharding import gather_state, shard_model, split_state
from hybrid_agent.model.state import ModelState
from hybrid_agent.model.testing import thread_ranks, tiny_model

MLA = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4}
MOE = {"n_experts": 4, "top_k": 2, "hidden_dim": 32, "shared_hidden_dim": 32, "shared_gate": True}
BIASED = {
    "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "bias": True},
    "mlp": {"hidden_dim": 64, "bias": True},
}  # row-parallel biases: added once
CASES: dict[str, tuple[list[str], dict[str, object]]] = {
    "attention": (["attention", "mlp"], BIASED),
    "qk_norm_full_post": (["attention", "gated_deltanet"], {"attention": {
        "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "qk_norm": "full", "norm_position": "post"}}),
    "mla": (["mla", "attention"], {"mla": MLA}),
    "mamba2_groups": (["mamba2"], {"mamba2": {"head_dim": 8, "d_state": 8, "chunk_size": 8, "n_groups": 2}}),
    "mamba2_one_group": (["mamba2", "attention"], {}),
    "gated_deltanet": (["gated_deltanet", "attention"], {}),
    "kda": (["kda", "attention"], {"kda": {"head_dim": 8, "n_heads": 2}}),
    "short_conv": (["short_conv", "attention"], {}),
    "moe": (["attention", "mamba2"], {"moe": MOE}),
    "untied_head": (["gated_deltanet", "mlp"], {"tie_embeddings": False}),
}  # fmt: skip
PROMPT, FORCED, FREE = 13, 4, 6  # prompt tokens, then steps fed given tokens, then greedy tokens


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= 1e-4 * max(scale, 1.0), f"{what}: max error {err} (scale {scale})"


def _prompt(model: HybridLM) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=g).to(model.device)


def _decode(engine: DecodeEngine, prompt: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """Prefill, FORCED steps fed fixed tokens (their logits), then FREE greedy tokens (the step's own
    advance on the gathered logits)."""
    logits = [engine.prefill(prompt).clone()]
    for t in range(FORCED):
        logits.append(engine.step(int(prompt[0, t])).clone())
    return logits, engine.generate_greedy(FREE, sync_every=4)


def _eager(model: HybridLM, prompt: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """The same calls on the model's own forward."""
    state = model.new_state()
    logits = [prefill(model, prompt, state, chunk_size=8)]
    for t in range(FORCED):
        logits.append(model(prompt[:, t : t + 1], state)[:, -1])
    tokens: list[int] = []
    for _ in range(FREE):
        tokens.append(int(logits[-1].argmax(-1)))
        logits.append(model(torch.tensor([[tokens[-1]]], device=model.device), state)[:, -1])
    return logits[: FORCED + 1], tokens


def _engine(model: HybridLM, attention: str) -> DecodeEngine:
    """ "kernel": the fused step (the one CUDA graphs capture); "sdpa": the model's blocks as they are."""
    return DecodeEngine(model, max_context=32, prefill_chunk=8, attention=attention)  # type: ignore[arg-type]


def _rank(
    tp: TensorParallel, full: HybridLM, want: tuple[list[torch.Tensor], list[int]], name: str,
    attention: str = "kernel",
):  # fmt: skip
    local = shard_model(full, tp)
    engine = _engine(local, attention)
    assert engine.static and engine.fused == (attention == "kernel"), f"{name}: the step at tp={tp.world}"
    assert engine.graphed == (full.device.type == "cuda")
    logits, tokens = _decode(engine, _prompt(full))
    for i, (a, b) in enumerate(zip(logits, want[0], strict=True)):
        _close(a, b, f"{name} rank {tp.rank} call {i}")
    assert tokens == want[1], f"{name}: greedy {tokens} != {want[1]}"
    # The snapshot's full layout; split again it is this rank's state exactly.
    gathered = gather_state(engine.state, local)
    again = split_state(gathered, local).to_tensors()
    for n, t in engine.state.to_tensors().items():
        assert torch.equal(again[n], t), f"{name}: {n} changed in gather + split"
    return {n: t.cpu() for n, t in gathered.items()}, _resume(engine, full)


def _resume(engine: DecodeEngine, full: HybridLM) -> tuple[torch.Tensor, list[int]]:
    """One fixed token's logits, then greedy tokens."""
    logits = engine.step(int(_prompt(full)[0, -1])).cpu()
    return logits, engine.generate_greedy(FREE, sync_every=4)


def _build(name: str) -> HybridLM:
    kinds, over = CASES[name]
    return tiny_model(kinds, seed=1, **over)


def _check(name: str, attention: str) -> None:
    full = _build(name)
    prompt = _prompt(full)
    ref = _engine(full, attention)
    want = _decode(ref, prompt)
    eager = _eager(full, prompt)
    for i, (a, b) in enumerate(zip(want[0], eager[0], strict=True)):
        _close(a, b, f"{name} tp=1 engine call {i}")
    assert want[1] == eager[1], f"{name}: the tp=1 engine's greedy {want[1]} != the model's {eager[1]}"
    results = thread_ranks(2, lambda tp: _rank(tp, full, want, name, attention))
    (gathered, more), (gathered1, more1) = results
    assert more[1] == more1[1]
    for n, t in gathered.items():
        assert torch.equal(t, gathered1[n]), f"{name}: ranks gathered different {n}"
    # tp=2's snapshot resumed at tp=1: the uninterrupted tp=1 engine's logits and next tokens.
    resumed = _engine(full, attention)
    resumed.load_state(ModelState.from_tensors(gathered, full.config))
    logits, tokens = _resume(resumed, full)
    want_logits, want_tokens = _resume(ref, full)
    _close(logits, want_logits, f"{name} resumed at tp=1")
    _close(more[0], want_logits, f"{name} tp=2 after the snapshot")
    assert tokens == want_tokens == more[1], f"{name}: {tokens} / {more[1]} != {want_tokens}"


@pytest.mark.parametrize("name", list(CASES))
def test_engine_tp2_equals_tp1_threads(name: str) -> None:
    """The fused step (residual + RMSNorm fused, stacked projections of the rank's weights, GEMV head)."""
    _check(name, "kernel")


@pytest.mark.parametrize("name", ["attention", "mamba2_one_group"])
def test_engine_tp2_unfused_threads(name: str) -> None:
    """The step through the model's own blocks (their `reduce`)."""
    _check(name, "sdpa")


def _nccl_rank(tp: TensorParallel, names: list[str]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    for name in names:
        full = _build(name).to(f"cuda:{tp.rank}")
        prompt = _prompt(full)
        want = _decode(_engine(full, "kernel"), prompt)
        _rank(tp, full, want, name)


@pytest.fixture
def importable(monkeypatch):
    """The ranks (new processes) import this module by its name under the repository root."""
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setattr(sys, "path", [*sys.path, root])


@pytest.mark.gpu
def test_engine_tp2_captured_over_nccl(importable):
    """Two GPUs over NCCL (`launch`, a card per rank): the step with its all-reduces and the head's
    all-gather captured as one CUDA graph and replayed, against the tp=1 engine on the same card."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    launch(_nccl_rank, 2, ["attention", "mamba2_one_group", "gated_deltanet", "mla", "moe"], backend="nccl")
