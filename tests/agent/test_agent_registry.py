"""A tool registry given to `Agent(...)` journals into the session database like the agent's own: its
file changes survive a resume (undo and rewind revert them). Scripted engine, real Store and tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.tools import ToolRegistry


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def test_a_write_through_a_given_registry_is_undone_after_resume(make_agent, workspace: Path, store) -> None:
    given = ToolRegistry(workspace, load_plugins=False)
    replies = [call("write_file", path="a.txt", content="changed\n"), "Wrote.<|end|>",
               call("write_file", path="n.txt", content="new\n"), "Again.<|end|>"]  # fmt: skip
    agent, _ = make_agent(replies, registry=given, mode="auto")
    assert agent.registry is given and given.journal is agent.journal
    list(agent.send_sync("change a"))
    list(agent.send_sync("make n"))
    assert (workspace / "a.txt").read_text() == "changed\n" and (workspace / "n.txt").exists()
    changes = store.file_changes(agent.session_id)
    assert [(c.turn, c.path, c.before, c.after) for c in changes] == [
        (1, "a.txt", b"hello from a\n", b"changed\n"),
        (2, "n.txt", None, b"new\n"),
    ]
    # Another process's agent, with a registry of its own, resumes the session and undoes both.
    own = ToolRegistry(workspace, load_plugins=False)
    resumed, _ = make_agent([], registry=own, session_id=agent.session_id)
    assert "n.txt" in resumed.undo()
    assert not (workspace / "n.txt").exists()
    resumed.rewind(0, revert_files=True)
    assert (workspace / "a.txt").read_text() == "hello from a\n"
    assert all(c.reverted for c in store.file_changes(agent.session_id))


def test_a_registry_that_already_changed_files_is_refused(make_agent, workspace: Path) -> None:
    used = ToolRegistry(workspace, load_plugins=False)
    assert not used.call("write_file", {"path": "b.txt", "content": "x"}, approve=True).is_error
    with pytest.raises(AgentError, match="already journals 1 file change"):
        make_agent([], registry=used)
    assert (workspace / "b.txt").exists()  # refused, not reverted or forgotten silently
    assert len(used.journal.entries()) == 1
