"""The agent's write-ahead file journal (agent/journal.py) and when a new session's row is written,
driven by the scripted engine (tests/agent/conftest.py) over the real Store and workspace."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.events import ToolResultEvent, TurnEnd
from hybrid_agent.tools.errors import UndoError


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def run(agent: Any, text: str) -> list[Any]:
    return list(agent.send_sync(text))


def test_a_change_is_committed_before_the_file_is_written(
    make_agent, store, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _ = make_agent(
        [call("write_file", path="a.txt", content="changed\n"), "Done.<|end|>"], mode="auto"
    )
    seen: list[tuple[list[tuple[str, bytes | None]], bytes]] = []
    rename = os.rename

    def watching(*args: Any, **kw: Any) -> None:
        # What another process would read from the database right before the file is replaced.
        changes = [(c.path, c.after) for c in store.file_changes(agent.session_id)]
        seen.append((changes, (workspace / "a.txt").read_bytes()))
        rename(*args, **kw)

    monkeypatch.setattr(os, "rename", watching)
    run(agent, "change a")
    monkeypatch.undo()
    assert seen == [([("a.txt", b"changed\n")], b"hello from a\n")]
    assert (workspace / "a.txt").read_text() == "changed\n"


def test_a_write_that_fails_is_not_left_in_the_journal(
    make_agent, store, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [call("write_file", path="b.txt", content="b\n"), "B.<|end|>",
               call("write_file", path="a.txt", content="changed\n"), "Failed.<|end|>"]  # fmt: skip
    agent, _ = make_agent(replies, mode="auto")
    run(agent, "make b")

    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    events = run(agent, "change a")
    monkeypatch.undo()
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.is_error and "space" in result.text.lower()
    assert (workspace / "a.txt").read_text() == "hello from a\n"
    assert [(c.path, c.reverted) for c in store.file_changes(agent.session_id)] == [
        ("b.txt", False),
        ("a.txt", True),
    ]
    assert "b.txt" in agent.undo()  # the a.txt entry is skipped, not refused


def test_a_turn_saved_on_a_fork_takes_its_file_changes_along(make_agent, store, workspace: Path) -> None:
    first, _ = make_agent(["One.<|end|>", "First window.<|end|>"])
    run(first, "hi")
    sid = first.session_id
    second, _ = make_agent([call("write_file", path="a.txt", content="second\n"), "Done.<|end|>"],
                           session_id=sid, mode="auto")  # fmt: skip
    run(first, "from the first")
    end = run(second, "from the second")[-1]
    assert isinstance(end, TurnEnd) and end.forked_from == sid
    fork = second.session_id
    assert store.file_changes(sid) == []
    assert [(c.turn, c.path) for c in store.file_changes(fork)] == [(2, "a.txt")]
    assert "a.txt" in second.undo()
    assert (workspace / "a.txt").read_text() == "hello from a\n"


def test_a_new_session_is_written_with_its_first_change(make_agent, store, workspace: Path) -> None:
    agent, engine = make_agent(["cut short<|end|>"], mode="auto")
    sid = agent.session_id
    assert store.list_sessions() == [] and agent.history() == []
    assert [(s.id, s.latest_turn) for s in agent.sessions()] == [(sid, None)]  # a UI lists the open one
    with pytest.raises(UndoError, match="nothing to undo"):
        agent.undo()
    agent.rename(sid, "my title")  # kept for the row
    assert agent.sessions()[0].title == "my title"
    engine.step_hook = lambda n: agent.cancel()
    assert run(agent, "hello")[-1].stop_reason == "cancelled"
    assert store.list_sessions() == []  # nothing was saved: still no row
    engine.step_hook = None
    engine.replies = [call("write_file", path="a.txt", content="x\n"), "Done.<|end|>"]
    run(agent, "write a")
    (info,) = store.list_sessions()
    assert (info.id, info.title, info.latest_turn) == (sid, "my title", 1)
    assert info.meta == {"window": None, "sinks": 0}


def test_a_new_session_is_named_after_the_message_of_its_first_saved_turn(make_agent, store) -> None:
    agent, engine = make_agent(["cut short<|end|>", "Saved.<|end|>"])
    engine.step_hook = lambda n: agent.cancel()
    run(agent, "not this one")
    engine.step_hook = None
    run(agent, "this one")
    assert [s.title for s in store.list_sessions()] == ["this one"]


def test_a_session_first_written_by_a_tool_is_named_after_the_message(make_agent, store) -> None:
    agent, engine = make_agent([call("write_file", path="a.txt", content="x\n"), "never read<|end|>"],
                               mode="auto")  # fmt: skip
    engine.step_hook = lambda n: agent.cancel() if engine.text.endswith("never") else None
    assert run(agent, "please   edit a")[-1].stop_reason == "cancelled"
    (info,) = store.list_sessions()
    assert (info.id, info.title, info.latest_turn) == (agent.session_id, "please edit a", None)
    assert [c.path for c in store.file_changes(info.id)] == ["a.txt"]
