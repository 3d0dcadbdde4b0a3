"""Tensor parallel on the CPU over gloo, two processes (model/parallel.py, model/sharding.py): every layer
kind's tp=2 logits equal the tp=1 model's to fp32 rounding, greedy continuations are identical, and a
state gathered from tp=2 resumes at tp=1 (and a tp=1 state re-split resumes at tp=2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.errors import ConfigError
from hybrid_agent.model.parallel import (
    TensorParallel,
    gather,
    launch,
    local_config,
    shard,
    state_rules,
    weight_rules,
)
from hybrid_agent.model.sharding import gather_state, shard_model, split_state
from hybrid_agent.model.state_layout import layout_metadata
from hybrid_agent.model.testing import thread_ranks, tiny_config, tiny_model
from safetensors.torch import load, save

BIASED = {
    "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "bias": True},
    "mlp": {"hidden_dim": 64, "bias": True},
}  # row-parallel biases: added once
CASES: dict[str, tuple[list[str], dict[str, object]]] = {
    "attention": (["attention", "mlp"], BIASED),
    "mla": (["mla", "attention"], {}),
    "qk_norm_full": (["attention"], {"attention": {"n_heads": 4, "n_kv_heads": 2, "qk_norm": "full"}}),
    "mamba2_groups": (["mamba2"], {"mamba2": {"head_dim": 8, "d_state": 8, "chunk_size": 8, "n_groups": 2}}),
    "mamba2_one_group": (["mamba2", "attention"], {}),
    "gated_deltanet": (["gated_deltanet", "attention"], {}),
    "kda": (["kda"], {"kda": {"head_dim": 8}}),
    "short_conv": (["short_conv", "attention"], {}),
    "moe": (["attention", "mamba2"], {"moe": {"n_experts": 4, "top_k": 2, "hidden_dim": 32,
                                              "shared_hidden_dim": 32, "shared_gate": True}}),
    # Experts in a latent space (Nemotron 3 Super): latent_in / latent_out whole on every rank, biases
    "moe_latent": (["attention", "mamba2"], {"mlp": {"hidden_dim": 64, "bias": True, "activation": "relu2"},
                   "moe": {"n_experts": 4, "top_k": 2, "hidden_dim": 32, "shared_hidden_dim": 32,
                           "latent_dim": 16, "scoring": "sigmoid"}}),
    "parallel": (["parallel"], {"tie_embeddings": False}),
    "four_ranks": (["mamba2", "attention", "kda"],
                   {"attention": {"n_heads": 4, "n_kv_heads": 4, "head_dim": 8}, "kda": {"head_dim": 8}}),
}  # fmt: skip


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= 1e-4 * max(scale, 1.0), f"{what}: max error {err} (scale {scale})"


def _greedy(model, ids, state, n):
    out, logits = [], model(ids, state)
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits = model(nxt, state)
    return out, logits


def _full(name: str):
    kinds, overrides = CASES[name]
    return tiny_model(kinds, seed=1, **overrides)


def _check_case(tp: TensorParallel, name: str, full) -> None:
    local = shard_model(full, tp)
    assert local.fingerprint == full.fingerprint
    ids = torch.randint(0, full.config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(2))
    ref_state, state = full.new_state(), local.new_state()
    _close(local(ids, state), full(ids, ref_state), f"{name} prefill")
    # The tp=2 state gathered is the tp=1 state (to fp32 rounding); splitting it again is exact.
    gathered = gather_state(state, local)
    ref_tensors = ref_state.to_tensors()
    assert set(gathered) == set(ref_tensors)
    for n, t in ref_tensors.items():
        _close(gathered[n], t, f"{name} state {n}")
    # Through a snapshot's bytes (safetensors with the layout recorded) and back: exact.
    saved = save({n: t.cpu() for n, t in gathered.items()}, metadata=layout_metadata(full.config, tp.world))
    assert safe_open_meta(saved)["tensor_parallel"].startswith(f"written by {tp.world}")
    gathered = {n: t.to(full.device) for n, t in load(saved).items()}
    again = split_state(gathered, local).to_tensors()
    for n, t in state.to_tensors().items():
        assert torch.equal(again[n], t), f"{name}: {n} changed in gather + split"
    # Greedy continuations: tp=2, tp=1, tp=2 resumed from the tp=1 state, tp=1 resumed from tp=2's.
    want, want_last = _greedy(full, ids[:, -1:], ref_state.clone(), 6)
    got, last = _greedy(local, ids[:, -1:], state.clone(), 6)
    assert got == want, f"{name}: greedy {got} != {want}"
    _close(last, want_last, f"{name} decode")
    from_tp1 = split_state(ref_state.to_tensors(), local)
    assert _greedy(local, ids[:, -1:], from_tp1, 6)[0] == want, f"{name}: tp=1 state at tp=2"
    from hybrid_agent.model.state import ModelState

    at_tp1 = ModelState.from_tensors(gathered, full.config)
    assert _greedy(full, ids[:, -1:], at_tp1, 6)[0] == want, f"{name}: tp=2 state at tp=1"


def safe_open_meta(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def _all_cases(tp: TensorParallel, names: list[str]) -> None:
    for name in names:
        _check_case(tp, name, _full(name))


@pytest.fixture
def importable(monkeypatch):
    """The ranks (new processes) import this module by its name under the repository root."""
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setattr(sys, "path", [*sys.path, root])  # spawn passes sys.path on; after the package


@pytest.mark.parametrize("name", [n for n in CASES if n != "four_ranks"])
def test_tp2_equals_tp1_threads(name):
    """Two ranks as two threads of this process, joined by a real gloo process group."""
    model = _full(name)
    thread_ranks(2, lambda tp: _check_case(tp, name, model))


def test_tp4_equals_tp1_threads():
    """Four ranks: a state gathered at tp=4 resumes at tp=1, a tp=1 state re-split at tp=4."""
    model = _full("four_ranks")
    thread_ranks(4, lambda tp: _check_case(tp, "four_ranks", model))


def _cuda_cases(tp: TensorParallel, names: list[str]) -> None:
    for name in names:
        _check_case(tp, name, _full(name).to(f"cuda:{tp.rank}"))


@pytest.mark.gpu
def test_tp2_equals_tp1_over_nccl(importable):
    """Two GPUs over NCCL (`launch`, one card per rank), the cases of one of each kind of split."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    launch(
        _cuda_cases,
        2,
        ["attention", "mamba2_one_group", "gated_deltanet", "moe", "moe_latent"],
        backend="nccl",
    )


@pytest.mark.slow
def test_tp2_equals_tp1_processes(importable):
    """Two processes (`launch`, as torchrun runs the ranks): every layer kind."""
    launch(_all_cases, 2, [n for n in CASES if n != "four_ranks"])


def test_sizes_that_do_not_split_are_refused():
    cfg = tiny_config(["attention"], attention={"n_heads": 3, "n_kv_heads": 3, "head_dim": 8})
    with pytest.raises(ConfigError, match=r"attention\.n_heads=3 does not split over tp=2"):
        local_config(cfg, 2)


def test_shard_and_gather_are_inverse():
    """Without processes: every weight's and state tensor's parts gather back to it exactly."""
    for kinds, overrides in CASES.values():
        full = tiny_model(kinds, seed=3, **overrides)
        rules = weight_rules(full.config)
        for n, t in full.state_dict().items():
            rule = rules.get(n)
            parts = [shard(t, rule, r, 2) for r in range(2)]
            assert torch.equal(gather(parts, rule, t.shape[0]), t), n
        state = full.new_state()
        full(torch.arange(5)[None], state)
        srules = state_rules(full.config)
        for n, t in state.to_tensors().items():
            parts = [shard(t, srules.get(n), r, 2) for r in range(2)]
            assert torch.equal(gather(parts, srules.get(n)), t), n
