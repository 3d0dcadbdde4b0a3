"""A session resumes under the attention window it was made with, whatever window the loaded engine
had (the TUI loads one engine, then `/resume` may open any session): the engine is rebuilt to the
session's (window, sinks), or the resume is refused when it cannot be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent import Agent
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.memory import Store
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.tokenizer import ByteTokenizer


def run(agent: Agent, text: str) -> list[Any]:
    return list(agent.send_sync(text))


def test_resume_switches_to_the_sessions_window_and_new_goes_back(make_agent, scripted_engine, store) -> None:
    windowed = scripted_engine(["One.<|end|>"])
    windowed.window, windowed.sinks = 16, 2
    made, _ = make_agent(engine=windowed)
    run(made, "one")
    session = made.session_id
    # The "TUI": an engine loaded with full attention, on a new session of its own.
    agent, engine = make_agent(["Two.<|end|>"])
    assert (agent.window, engine.sinks) == (None, 0)
    agent.resume(session)
    assert (agent.window, engine.sinks) == (16, 2) and agent.turn == 1
    assert engine.tokens == windowed.tokens
    events = run(agent, "two")
    assert events[-1].saved and events[-1].window == 16
    forked = agent.fork(1)
    assert agent.window == 16 and store.get_session(forked).meta["window"] == 16
    # A new session runs with the policy the agent was opened with, and records it.
    fresh = agent.new_session()
    assert (agent.window, engine.sinks) == (None, 0)
    run(agent, "three")  # a new session's row is written with its first saved turn
    assert (store.get_session(fresh).meta["window"], store.get_session(fresh).meta["sinks"]) == (None, 0)
    # A session made before policies were recorded keeps the engine's.
    legacy = store.create_session("old", store.get_session(fresh).workspace, engine.fingerprint)
    agent.resume(legacy.id)
    assert agent.window is None and agent.session_id == legacy.id


def test_an_engine_that_cannot_change_its_window_refuses(make_agent, scripted_engine) -> None:
    windowed = scripted_engine(["One.<|end|>"])
    windowed.window, windowed.sinks = 16, 2
    made, _ = make_agent(engine=windowed)
    run(made, "one")

    class FixedWindowEngine(scripted_engine):  # type: ignore[misc, valid-type]
        set_attention_policy = None  # an Engine without the optional method

    agent, engine = make_agent(["Mine.<|end|>"], engine=FixedWindowEngine(["Mine.<|end|>"]))
    run(agent, "mine")
    mine, tokens = agent.session_id, list(engine.tokens)
    with pytest.raises(AgentError, match=r"window of 16 tokens.*cannot change it.*--window 16 --sinks 2"):
        agent.resume(made.session_id)
    assert agent.session_id == mine and engine.tokens == tokens and agent.window is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[HybridLM, Path]:
    torch.manual_seed(5)
    lm = HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).eval()
    path = tmp_path_factory.mktemp("tiny")
    lm.save_pretrained(path)
    return lm, path


def test_resumed_under_another_engines_window_is_exact(tiny: tuple[HybridLM, Path], tmp_path: Path) -> None:
    lm, _ = tiny
    store = Store(f"sqlite:///{tmp_path / 's.db'}")

    def agent_with(window: int | None, **kw: Any) -> Agent:
        engine = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=window, sinks=2)
        return Agent(engine, store, workspace=tmp_path, max_new_tokens=6, **kw)

    prompts = ["first", "second", "third"]
    straight = agent_with(8)
    for p in prompts:
        run(straight, p)
    stopped = agent_with(8)
    for p in prompts[:2]:
        run(stopped, p)
    other = agent_with(None)  # loaded with full attention
    other.resume(stopped.session_id)
    assert other.window == 8 and other.engine.sinks == 2
    end = run(other, prompts[2])[-1]
    assert end.window == 8 and end.state_tokens > 10 * 8  # the window did drop tokens
    a, b = store.load_snapshot(straight.session_id, 3), store.load_snapshot(stopped.session_id, 3)
    assert a.n_tokens == b.n_tokens and a.recurrent.keys() == b.recurrent.keys()
    for k in a.recurrent:
        assert torch.equal(a.recurrent[k], b.recurrent[k]), k
    for k in a.pages[-1][2]:
        assert torch.equal(a.pages[-1][2][k], b.pages[-1][2][k]), k
    raw = [[e.data["raw"] for e in store.events(s) if e.kind == "assistant"] for s in (straight.session_id,
           stopped.session_id)]  # fmt: skip
    assert raw[0] == raw[1]
    for ag in (straight, stopped):
        ag.model_owner.shutdown(wait=True)
    other.close()


def test_open_with_another_window_on_resume_is_refused(tiny: tuple[HybridLM, Path], tmp_path: Path) -> None:
    _, path = tiny
    opts = {"model": str(path), "db": str(tmp_path / "s.db"), "workspace": str(tmp_path), "max_new_tokens": 2}
    first = Agent.open(**opts, window=8, sinks=2)
    run(first, "hi")
    session = first.session_id
    first.close()
    refused = rf"session {session} runs with an attention window of 8.*--window 32"
    with pytest.raises(AgentError, match=refused):
        Agent.open(**opts, window=32, resume=session)
    again = Agent.open(**opts, window=8, resume=session)  # the same window is fine
    assert again.window == 8 and again.turn == 1
    again.close()
