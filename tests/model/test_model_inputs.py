"""Bad input to the model gives our own errors, with messages that say what to do."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import ModelError, StateMismatchError, TokenRangeError


def test_token_ids_out_of_range(make_model):
    model = make_model(["attention"])
    state = model.new_state()
    with pytest.raises(TokenRangeError, match=r"\[0, 267\).*tokenizer"):
        model(torch.tensor([[1, 267]]), state)
    with pytest.raises(TokenRangeError, match=r"\[-1, 5\]"):
        model(torch.tensor([[5, -1]]), state)
    assert state.n_tokens == 0  # refused before anything changed


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([1, 2]), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 0, dtype=torch.long), [[1, 2]]],
    ids=["1d", "float", "empty", "list"],
)
def test_malformed_input_ids(make_model, bad):
    model = make_model(["mamba2"])
    with pytest.raises(TokenRangeError):
        model(bad, model.new_state())


def test_not_a_state(make_model):
    model = make_model(["mamba2"])
    with pytest.raises(StateMismatchError, match="new_state"):
        model(torch.tensor([[1]]), {"n_tokens": 0})


def test_bad_window_policy(make_model):
    model = make_model(["attention"])
    with pytest.raises(StateMismatchError, match="window"):
        model.new_state(window=0)
    with pytest.raises(StateMismatchError, match="sinks"):
        model.new_state(window=4, sinks=-1)


def test_errors_share_a_base():
    assert issubclass(TokenRangeError, ModelError) and issubclass(StateMismatchError, ModelError)
    assert issubclass(TokenRangeError, ValueError)
