"""ModelState: flat tensors, safetensors round trips, snapshot pages, clone, and mismatches."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import ModelState, StateMismatchError
from safetensors.torch import load, save

MIXED = ["mamba2", "attention", "gated_deltanet", "parallel", "mlp"]


def ids_for(model, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def greedy(model, state, first_logits: torch.Tensor, n: int) -> list[int]:
    out, logits = [], first_logits
    for _ in range(n):
        tok = int(logits[0, -1].argmax())
        out.append(tok)
        logits = model(torch.tensor([[tok]]), state)
    return out


@pytest.mark.parametrize("window", [None, 6])
def test_round_trip_through_safetensors_bytes_then_continue(make_model, window):
    model = make_model(MIXED)
    ids = ids_for(model, 30)
    live = model.new_state(window=window, sinks=2)
    logits = model(ids, live)
    blob = save(live.to_tensors())
    restored = ModelState.from_tensors(load(blob), model.config)
    assert restored.n_tokens == live.n_tokens == 30
    assert (restored.window, restored.sinks) == (live.window, live.sinks)
    assert restored.nbytes == live.nbytes
    for name, t in live.to_tensors().items():
        assert torch.equal(restored.to_tensors()[name], t), name
    # Continue both: the restored state decodes exactly what the never-stopped one does.
    assert greedy(model, restored, logits, 25) == greedy(model, live, logits, 25)
    for name, t in live.to_tensors().items():
        assert torch.equal(restored.to_tensors()[name], t), name


def test_names_are_stable(make_model):
    model = make_model(MIXED)
    names = set(model.new_state().to_tensors())
    assert names == {
        "n_tokens", "window", "sinks",
        "layers.0.conv", "layers.0.ssm",
        "layers.1.k", "layers.1.v", "layers.1.pos",
        "layers.2.conv", "layers.2.recurrent",
        "layers.3.conv", "layers.3.ssm", "layers.3.k", "layers.3.v", "layers.3.pos",
    }  # fmt: skip
    rec = model.new_state().recurrent_tensors()
    assert not any(n.endswith((".k", ".v", ".pos")) for n in rec)
    assert all(t.dtype == torch.float32 for n, t in rec.items() if n.startswith("layers."))


def test_clone_is_independent(make_model):
    model = make_model(MIXED)
    ids = ids_for(model, 12)
    state = model.new_state()
    model(ids[:, :8], state)
    fork = state.clone()
    a = model(ids[:, 8:], state)
    b = model(ids[:, 8:], fork)
    assert torch.equal(a, b)
    model(ids[:, :3], fork)
    assert fork.n_tokens == 15 and state.n_tokens == 12
    assert not torch.equal(fork.layers[0].recurrent["ssm"], state.layers[0].recurrent["ssm"])


def save_pages(model, ids: torch.Tensor, cuts: list[int], **kw: object):
    """Prefill turn by turn, saving the new cache pages after each turn (what the agent does)."""
    state = model.new_state(**kw)
    pages, last = [], 0
    for cut in cuts:
        state.keep_from = last  # tokens of the turn stay in memory until they are saved
        model(ids[:, last:cut], state)
        pages.append((last, cut, state.cache_range(last, cut)))
        last = cut
    state.keep_from = None
    return state, pages


@pytest.mark.parametrize("window", [None, 5])
def test_from_parts_rebuilds_the_state(make_model, window):
    model = make_model(MIXED)
    ids = ids_for(model, 40)
    state, pages = save_pages(model, ids, [7, 19, 20, 33], window=window, sinks=2)
    recurrent = {k: v.clone() for k, v in state.recurrent_tensors().items()}
    if window is not None:
        # Only the pages overlapping the sinks and the window are needed.
        pages = [p for p in pages if p[0] < 2 or p[1] > 33 - window]
    rebuilt = ModelState.from_parts(recurrent, pages, model.config, window=window, sinks=2)
    next_ids = ids[:, 33:]
    if window is not None:
        state.evict(1), state.evict(3)  # drop what keep_from held; the window alone decides
    assert torch.equal(model(next_ids, rebuilt), model(next_ids, state))


def test_from_parts_needs_the_pages_the_window_reads(make_model):
    model = make_model(["attention"])
    ids = ids_for(model, 20)
    state, pages = save_pages(model, ids, [10, 20])
    with pytest.raises(StateMismatchError, match="do not cover"):
        ModelState.from_parts(state.recurrent_tensors(), pages[1:], model.config)
    # With a window of 8 (no sinks) the first page is not needed.
    ModelState.from_parts(state.recurrent_tensors(), pages[1:], model.config, window=8)


def test_state_of_another_config_is_refused(make_model):
    a = make_model(MIXED)
    b = make_model(["mamba2", "attention"])
    c = make_model(MIXED, d_model=48)
    with pytest.raises(StateMismatchError, match="do not belong"):
        ModelState.from_tensors(a.new_state().to_tensors(), b.config)
    with pytest.raises(StateMismatchError, match="shape"):
        ModelState.from_tensors(a.new_state().to_tensors(), c.config)
    with pytest.raises(StateMismatchError, match="another config"):
        b(torch.zeros(1, 1, dtype=torch.long), a.new_state())
    with pytest.raises(StateMismatchError, match="batch"):
        a(torch.zeros(2, 1, dtype=torch.long), a.new_state(batch_size=1))
    bad = a.new_state().to_tensors()
    bad["layers.1.pos"] = torch.tensor([0, 1])  # positions without keys
    with pytest.raises(StateMismatchError, match="corrupt"):
        ModelState.from_tensors(bad, a.config)


def test_nbytes_counts_every_tensor(make_model):
    model = make_model(MIXED)
    state = model.new_state()
    model(ids_for(model, 10), state)
    assert state.nbytes == sum(t.nbytes for t in state.to_tensors().values())
    before = state.nbytes
    model(ids_for(model, 1), state)
    cfg = model.config.attention
    per_token = 2 * 2 * cfg.n_kv_heads * cfg.head_dim * 4 + 2 * 8  # K+V of 2 attention layers + pos
    assert state.nbytes - before == per_token


def test_inference_mode_or_not_both_work(make_model):
    model = make_model(["attention", "mamba2", "gated_deltanet"])
    ids = ids_for(model, 12)
    state = model.new_state(window=4)
    with torch.inference_mode():
        model(ids[:, :6], state)
    model(ids[:, 6:7], state)  # in-place updates of tensors made under inference mode
    state.keep_from = 0
    model(ids[:, 7:9], state)
    state.keep_from = None
    for i in range(len(state.layers)):
        state.evict(i)  # outside inference mode, on inference tensors
    fork = state.clone()
    with torch.inference_mode():
        a = model(ids[:, 9:], fork)
    b = model(ids[:, 9:], state)
    assert torch.equal(a, b)
    restored = ModelState.from_tensors(load(save(state.to_tensors())), model.config)
    assert restored.n_tokens == 12
