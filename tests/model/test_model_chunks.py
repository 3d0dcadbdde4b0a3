"""Chunk invariance: one prefill == random chunks == token by token, for every layer kind."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridLM
from hybrid_agent.model.testing import assert_close, random_sizes, run_in_pieces

KINDS = ["attention", "mamba2", "gated_deltanet", "parallel", "mlp"]
MIXED = ["mamba2", "attention", "gated_deltanet", "parallel", "mlp", "attention"]
T = 37  # crosses several SSD / delta-rule chunks of 8, with a ragged tail


@pytest.mark.parametrize("layer_types", [[k, k] for k in KINDS] + [MIXED], ids=[*KINDS, "mixed"])
@pytest.mark.parametrize("window", [None, (5, 2)], ids=["full", "window"])
def test_one_call_equals_chunks_equals_steps(make_model, layer_types, window):
    model = make_model(layer_types)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)
    kw = {} if window is None else {"window": window[0], "sinks": window[1]}
    whole, _ = run_in_pieces(model, ids, [T], **kw)
    assert whole.shape == (2, T, model.config.vocab_size)
    assert_close(whole, run_in_pieces(model, ids, random_sizes(T, gen), **kw)[0])
    assert_close(whole, run_in_pieces(model, ids, [1] * T, **kw)[0])


def naive_windowed_attention_logits(
    model: HybridLM, ids: torch.Tensor, window: int, sinks: int
) -> torch.Tensor:
    """Reference for the window: re-run the whole prefix per query with only the visible keys."""
    out = []
    for q in range(ids.shape[1]):
        keep = [j for j in range(q + 1) if j > q - window or j < sinks]
        # An attention-only model without positional encoding sees a set of keys: feeding just the
        # visible tokens reproduces what query q must see under the window policy.
        state = model.new_state(ids.shape[0])
        out.append(model(ids[:, keep], state)[:, -1:])
    return torch.cat(out, dim=1)


def test_window_masks_exactly_the_policy(make_model):
    model = make_model(
        ["attention"], attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "rope_theta": None}
    )
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    got, _ = run_in_pieces(model, ids, [3, 1, 9, 7], window=4, sinks=2)
    assert_close(got, naive_windowed_attention_logits(model, ids, window=4, sinks=2))
    full, _ = run_in_pieces(model, ids, [20])
    assert float((got - full).abs().max()) > 1e-3  # the window does change what is seen


def test_window_bounds_the_cache(make_model):
    model = make_model(["attention", "mamba2"])
    state = model.new_state(window=6, sinks=3)
    ids = torch.randint(0, model.config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(3))
    model(ids[:, :30], state)
    for n in range(30, 50):
        model(ids[:, n : n + 1], state)
        pos = state.layers[0].pos
        assert pos is not None and pos.tolist() == [0, 1, 2, *range(n + 1 - 6, n + 1)]
        assert state.layers[0].cache["k"].shape[2] == 9
    bytes_at_50 = state.nbytes
    model(ids[:, :20], state)
    assert state.nbytes == bytes_at_50  # constant memory with the window on


def test_keep_from_holds_unsaved_tokens_without_changing_logits(make_model):
    model = make_model(["attention"])
    ids = torch.randint(0, model.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(4))
    a, b = model.new_state(window=4), model.new_state(window=4)
    b.keep_from = 10
    la, lb = model(ids, a), model(ids, b)
    assert_close(la, lb)
    assert b.layers[0].pos is not None and b.layers[0].pos.tolist() == list(range(10, 30))
    assert a.layers[0].pos is not None and a.layers[0].pos.tolist() == list(range(26, 30))


def test_eviction_in_batches_keeps_logits_and_bounds_storage(make_model):
    model = make_model(["attention", "mamba2", "attention"])
    ids = torch.randint(0, model.config.vocab_size, (1, 90), generator=torch.Generator().manual_seed(5))
    window, sinks = 24, 2
    reference, _ = run_in_pieces(model, ids, [90], window=window, sinks=sinks)
    state = model.new_state(window=window, sinks=sinks)
    slack = state.evict_slack
    assert slack == 3
    steps = [model(ids[:, :10], state)]
    for n in range(10, 90):
        steps.append(model(ids[:, n : n + 1], state))
        layer = state.layers[0]
        assert layer.pos is not None
        assert len(layer.pos) <= sinks + window + slack  # stale tokens linger at most `slack` steps
        assert layer.storage["k"].shape[2] <= sinks + window + slack + 10  # room for the largest call
    assert_close(reference, torch.cat(steps, dim=1))


def test_state_tensors_are_snapshots(make_model):
    model = make_model(["attention", "mamba2"])
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(6))
    state = model.new_state()
    model(ids[:, :8], state)
    saved = {k: v.clone() for k, v in state.to_tensors().items()}
    taken, rec = state.to_tensors(), state.recurrent_tensors()
    for n in range(8, 12):
        model(ids[:, n : n + 1], state)  # decode updates states in place and appends in place
    assert all(torch.equal(taken[k], saved[k]) for k in saved)
    assert all(torch.equal(rec[k], saved[k]) for k in rec)
