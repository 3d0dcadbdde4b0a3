"""A scripted engine for testing the loop's logic (tool rounds, approvals, cancellation, limits).

It is a real `Engine` as far as the loop can tell: a byte tokenizer, a chat format, a state (the list
of every token id it has read) that is snapshotted and restored through the real `Store`. Instead of
a model it "decodes" replies chosen by the test, one token at a time. Everything else in these tests
is real: the SQLite store, the tool registry and its workspace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.loop import Agent
from hybrid_agent.memory import Store
from hybrid_agent.model import Page
from hybrid_agent.model.chat import ChatFormat, NativeChatFormat, Segment
from hybrid_agent.model.tokenizer import ByteTokenizer
from torch import Tensor


class ScriptedEngine:
    model_name = "scripted"
    device = "cpu"
    fingerprint = "scripted-engine-v1"
    window: int | None = None
    sinks = 0

    def __init__(self, replies: Sequence[str] = (), chat: ChatFormat | None = None) -> None:
        self.chat = chat or NativeChatFormat()
        self.tokenizer = ByteTokenizer()
        self.replies = list(replies)
        self.tokens: list[int] = []  # the state: everything read so far
        self._queue: list[int] = []
        self.step_hook: Callable[[int], None] | None = None  # called before each decoded token
        self.prefill_log: list[str] = []  # the text of each prefilled segment, in order

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def state_bytes(self) -> int:
        return 8 * len(self.tokens)

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)

    def encode(self, segment: Segment) -> list[int]:
        return segment.encode(self.tokenizer)

    def text_stream(self) -> Any:
        return self.tokenizer.stream_decoder()

    def reset(self) -> None:
        self.tokens = []
        self._queue = []

    def set_attention_policy(self, window: int | None, sinks: int) -> None:
        # No attention here: the policy is only what the agent records and reports.
        self.window, self.sinks = window, (sinks if window is not None else 0)
        self.reset()

    def prefill(self, ids: Sequence[int]) -> None:
        if len(ids) > 1:  # a segment (generated tokens come one by one): a reply ends here
            self._queue = []
            self.prefill_log.append(self.tokenizer.decode(ids))
        self.tokens += list(ids)

    def next_token(self) -> int:
        if not self._queue:
            reply = self.replies.pop(0) if self.replies else "<|end|>"
            self._queue = self.tokenizer.encode(reply, special=True)
        if self.step_hook is not None:
            self.step_hook(len(self.tokens))
        return self._queue.pop(0)

    def snapshot(self, since: int) -> tuple[dict[str, Tensor], list[Page]]:
        recurrent = {"n_tokens": torch.tensor(len(self.tokens))}
        pages = []
        if len(self.tokens) > since:
            pages.append(Page(since, len(self.tokens), {"ids": torch.tensor(self.tokens[since:])}))
        return recurrent, pages

    def mark_saved(self) -> None:
        pass

    def restore(self, recurrent: dict[str, Tensor], pages: Sequence[Page]) -> None:
        self.tokens = [int(t) for p in sorted(pages, key=lambda p: p.start) for t in p.tensors["ids"]]
        assert len(self.tokens) == int(recurrent["n_tokens"])
        self._queue = []

    MODEL_WORK = ("encode", "reset", "set_attention_policy", "prefill", "next_token", "snapshot",
                  "mark_saved", "restore")  # fmt: skip

    def record_threads(self) -> list[tuple[str, threading.Thread]]:
        """From now on, each call of the engine's model work is listed with the thread it ran on."""
        seen: list[tuple[str, threading.Thread]] = []
        for name in self.MODEL_WORK:
            method = getattr(self, name)

            def recorded(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
                seen.append((_name, threading.current_thread()))
                return _method(*args, **kwargs)

            setattr(self, name, recorded)
        return seen


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("hello from a\n")
    return ws


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(f"sqlite:///{tmp_path / 'sessions.db'}")
    yield s
    s.close()


@pytest.fixture
def make_agent(store: Store, workspace: Path) -> Any:
    made: list[Agent] = []

    def make(replies: Sequence[str] = (), **kw: Any) -> tuple[Agent, ScriptedEngine]:
        engine = kw.pop("engine", None) or ScriptedEngine(replies, chat=kw.pop("chat", None))
        agent = Agent(engine, store, **{"workspace": workspace, **kw})
        made.append(agent)
        return agent, engine

    yield make
    for a in made:
        a.model_owner.shutdown(wait=True)


@pytest.fixture
def scripted_engine() -> type[ScriptedEngine]:
    return ScriptedEngine


__all__ = ["ScriptedEngine", "threading"]
