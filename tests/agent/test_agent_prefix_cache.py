"""The state after a new session's system prompt is computed once and kept (agent/prefix_cache.py): a
later new session restores it and reads only its message, and ends token for token and tensor for
tensor where the first one did. A real model (tiny, random), engine, tokenizer and SQLite store."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent import prefix_cache
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.events import TextDelta, TurnEnd
from hybrid_agent.agent.loop import Agent
from hybrid_agent.agent.records import user_message
from hybrid_agent.memory import Store
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def model() -> HybridLM:
    torch.manual_seed(7)
    cfg = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet"])
    return HybridLM(cfg).eval()


class Run:
    """One agent process, as far as the model is concerned: a fresh engine over the shared model."""

    def __init__(self, model: HybridLM, store: Store, workspace: Path, **kw: Any) -> None:
        self.engine = ModelEngine(model, ByteTokenizer(), NativeChatFormat(), window=kw.pop("window", None))
        self.read: list[int] = []  # the length of every prefill call
        prefill = self.engine.prefill

        def counted(ids: Any) -> None:
            self.read.append(len(ids))
            prefill(ids)

        self.engine.prefill = counted  # type: ignore[method-assign]
        self.agent = Agent(self.engine, store, workspace=workspace, max_new_tokens=12, **kw)

    def turn(self, text: str) -> tuple[str, TurnEnd]:
        events = self.agent.send_sync(text)
        assert isinstance(events[-1], TurnEnd) and events[-1].saved, events[-1]
        return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]

    def prompt_reads(self) -> list[int]:
        """The prefill calls of the first segment (those before the first fed-back token)."""
        return self.read[: self.read.index(1)]

    def prefix(self, text: str) -> int:
        """How many tokens of a new session's first segment for `text` are its shared prefix."""
        a = self.agent
        tools = [t["function"] for t in a.registry.schemas()]
        segment = self.engine.chat.segment([], [user_message(text)], system=a.system_prompt, tools=tools)
        return a._prefix_of(self.engine.encode(segment), a.system_prompt, tools)[0]

    def state(self) -> dict[str, torch.Tensor]:
        recurrent, pages = self.engine.snapshot(0)
        return {**recurrent, **{f"page.{k}": v for p in pages for k, v in p.tensors.items()}}

    def close(self) -> None:
        self.agent.close()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(f"sqlite:///{tmp_path / 'sessions.db'}")
    yield s
    s.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    return tmp_path / "ws"


def test_a_new_session_restores_the_system_prompt_state_exactly(model, store, workspace) -> None:
    first = Run(model, store, workspace)
    text1, end1 = first.turn("hello there")
    state1, total, prefix = first.state(), end1.prompt_tokens, first.prefix("hello there")
    reads = first.prompt_reads()  # the system part was read alone (in chunks), then the message
    assert 16 <= prefix < total and sum(reads) == total and prefix in itertools.accumulate(reads)
    first.close()
    assert [i.meta["prefix_key"] for i in store.list_sessions(hidden=True)]  # kept, hidden ...
    assert [i.id for i in store.list_sessions()] == [first.agent.session_id]  # ... from the list

    second = Run(model, store, workspace)
    text2, end2 = second.turn("hello there")
    assert second.prompt_reads() == [total - prefix]  # only the message was read: the prefix was restored
    assert (text2, end2.prompt_tokens, end2.state_tokens) == (text1, total, end1.state_tokens)
    state2 = second.state()
    assert state1.keys() == state2.keys() and all(torch.equal(state1[k], state2[k]) for k in state1)
    # The session saved every page from its first token: it resumes like any other.
    second.close()
    third = Run(model, store, workspace, session_id=second.agent.session_id)
    state3 = third.state()
    assert all(torch.equal(state2[k], state3[k]) for k in state2)
    third.turn("and then?")
    third.close()


def test_another_system_prompt_or_a_window_is_not_restored(model, store, workspace) -> None:
    Run(model, store, workspace).turn("hi")
    other = Run(model, store, workspace, system_prompt="You are terse.")
    _, end = other.turn("hi")
    assert sum(other.prompt_reads()) == end.prompt_tokens  # read in full
    assert len(store.list_sessions(hidden=True)) == 2
    windowed = Run(model, store, workspace, window=64)
    windowed.turn("hi")
    assert len(store.list_sessions(hidden=True)) == 2  # not under a window


def test_at_most_keep_states_are_kept(model, store, workspace, monkeypatch) -> None:
    monkeypatch.setattr(prefix_cache, "KEEP", 2)
    for i in range(4):
        Run(model, store, workspace, system_prompt=f"You are agent number {i}.").turn("hi")
    kept = store.list_sessions(hidden=True)
    assert len(kept) == 2
    again = Run(model, store, workspace, system_prompt="You are agent number 3.")
    _, end = again.turn("hi")
    assert again.prompt_reads() == [end.prompt_tokens - again.prefix("hi")]  # the newest was kept


def test_an_unreadable_stored_state_is_computed_again(model, store, workspace) -> None:
    first = Run(model, store, workspace)
    text1, _ = first.turn("hi")
    (hidden,) = store.list_sessions(hidden=True)
    store.truncate_session(hidden.id, 0)  # its turn gone: a row without a state
    second = Run(model, store, workspace)
    text2, _ = second.turn("hi")
    assert text2 == text1 and second.prompt_reads() == first.prompt_reads()  # read again ...
    (stored,) = store.list_sessions(hidden=True)
    assert store.get_session(stored.id).latest_turn == 1  # ... and stored again
