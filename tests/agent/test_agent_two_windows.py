"""One session open in two windows, with the real model and Store: the second window's turn, which
another window saved first under the same number, goes on a fork, and that fork is exactly the session
an uninterrupted single window would have made (same answers, same saved state, same next turn)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hybrid_agent.agent import Agent
from hybrid_agent.agent.events import TurnEnd
from hybrid_agent.memory import Store
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM


def raw_turns(store: Store, session: str) -> list[str]:
    return [e.data["raw"] for e in store.events(session) if e.kind == "assistant"]


def turn(agent: Agent, text: str) -> TurnEnd:
    end = list(agent.send_sync(text))[-1]
    assert isinstance(end, TurnEnd) and end.saved, end
    return end


@pytest.mark.parametrize("window", [None, 8], ids=["full-attention", "window-8"])
def test_the_second_windows_turn_is_kept_on_an_exact_fork(tmp_path: Path, window: int | None) -> None:
    torch.manual_seed(5)
    config = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet"])
    HybridLM(config).save_pretrained(tmp_path / "m")
    opts = {"model": str(tmp_path / "m"), "db": str(tmp_path / "s.db"), "workspace": str(tmp_path),
            "max_new_tokens": 6, "window": window, "sinks": 2}  # fmt: skip
    first = Agent.open(**opts)
    turn(first, "one")
    session = first.session_id
    second = Agent.open(**{**opts, "window": None}, resume=session)  # the session's own window
    turn(first, "two, from the first window")
    end = turn(second, "two, from the second window")
    assert end.forked_from == session and second.session_id != session
    # What one window alone would have done: the same two messages, uninterrupted.
    alone = Agent.open(**opts)
    turn(alone, "one")
    turn(alone, "two, from the second window")
    store = Store(opts["db"])
    fork = second.session_id
    assert raw_turns(store, fork) == raw_turns(store, alone.session_id)
    saved, expected = store.load_snapshot(fork, 2), store.load_snapshot(alone.session_id, 2)
    assert saved.n_tokens == expected.n_tokens and saved.recurrent.keys() == expected.recurrent.keys()
    for k in saved.recurrent:
        assert torch.equal(saved.recurrent[k], expected.recurrent[k]), k
    # A new process resuming the fork continues exactly as the lone window does.
    resumed = Agent.open(**{**opts, "window": None}, resume=fork)
    turn(resumed, "three")
    turn(alone, "three")
    assert raw_turns(store, fork) == raw_turns(store, alone.session_id)
    assert len(raw_turns(store, session)) == 2 and store.get_session(session).latest_turn == 2
    store.close()
    for agent in (first, second, alone, resumed):
        agent.close()
