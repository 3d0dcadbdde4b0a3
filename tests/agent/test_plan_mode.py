"""Plan mode (agent/plan.py): only read-only tools, writers refused with a tool error, the final answer
is the plan, accepting it goes back to the mode before and continues the same session; mode changes
are recorded in the session's events. Real tool registry and store; a scripted engine. (MCP tools
and readOnlyHint: tests/tools/test_tools_mcp.py, with the real MCP server.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybrid_agent.agent.events import ToolCallRequested, ToolResultEvent, TurnEnd
from hybrid_agent.agent.plan import ACCEPTED, read_only_tools
from hybrid_agent.agent.records import conversation_of
from hybrid_agent.tools import ToolRegistry, tool


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


PLAN = "1. Add b.txt with x.\n2. Check it."


def test_plan_mode_offers_only_read_only_tools_and_refuses_writers(make_agent, workspace: Path) -> None:
    replies = [
        call("read_file", path="a.txt"),
        call("write_file", path="b.txt", content="x"),
        f"{PLAN}<|end|>",
    ]
    agent, engine = make_agent(replies, mode="plan", enable_commands=True)
    events = agent.send_sync("add b.txt")
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [r.tool for r in results] == ["read_file", "write_file"]
    assert not results[0].is_error and "hello from a" in results[0].text
    refused = results[1]
    assert refused.is_error and refused.denied and refused.text.startswith("plan mode is on: write_file")
    assert refused.text in engine.text  # the model read why
    assert not (workspace / "b.txt").exists()
    # The message told the model which tools it has in plan mode: the read-only ones, not the others.
    offered = read_only_tools(agent.registry)
    assert offered == ["read_file", "list_dir", "glob", "grep"]
    # A session that starts in plan mode lists only those in its system prompt.
    [system] = [e for e in agent.store.events(agent.session_id) if "tools" in (e.data or {})]
    assert [t["name"] for t in system.data["tools"]] == offered
    assert '"name": "write_file"' not in engine.text.split("<|user|>")[0]
    note = engine.text.split("<|user|>")[1]
    assert note.startswith("[Plan mode is on.") and "(read_file, list_dir, glob, grep)" in note
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.saved and end.plan == PLAN
    stored = agent.store.events(agent.session_id)
    assert [e.data["plan"] for e in stored if "plan" in (e.data or {})] == [PLAN]


def test_a_plan_mode_turn_asks_nobody_and_the_write_call_is_refused_in_every_approval(
    make_agent, workspace: Path
) -> None:
    """A writer is refused before approval: the user is never asked about a call plan mode forbids."""
    asked: list[str] = []

    async def approval(request: ToolCallRequested) -> Any:
        from hybrid_agent.agent.events import ApprovalDecision

        asked.append(request.tool)
        return ApprovalDecision(allow=True)

    agent, _ = make_agent([call("edit_file", path="a.txt", old="hello", new="bye"), "Plan.<|end|>"],
                          mode="plan", approval=approval)  # fmt: skip
    events = agent.send_sync("change a")
    request = next(e for e in events if isinstance(e, ToolCallRequested))
    assert not request.needs_approval and asked == []
    assert (workspace / "a.txt").read_text() == "hello from a\n"


def test_accepting_the_plan_goes_back_to_the_mode_before_and_continues(make_agent, workspace: Path) -> None:
    replies = [f"{PLAN}<|end|>", call("write_file", path="b.txt", content="x"), "Done.<|end|>", "Ok.<|end|>"]
    agent, engine = make_agent(replies, mode="accept-edits")
    agent.mode = "plan"
    end = agent.send_sync("add b.txt")[-1]
    assert end.plan == PLAN and agent.mode == "plan" and agent.mode_before_plan == "accept-edits"
    session = agent.session_id
    message = agent.accept_plan()
    assert message == ACCEPTED and agent.mode == "accept-edits"
    events = agent.send_sync(message)
    assert agent.session_id == session and agent.turn == 2
    assert (workspace / "b.txt").read_text() == "x"  # accept-edits: written without asking
    assert events[-1].plan is None
    # The model was told that plan mode is off, in front of the follow-up message.
    follow_up = engine.text.split("<|user|>")[2]
    assert follow_up.startswith("[Plan mode is off (approval mode: accept-edits)") and ACCEPTED in follow_up
    # The session started in plan mode: the tools its system prompt lacks are given here, once.
    assert '"name": "write_file"' in follow_up and '"name": "read_file"' not in follow_up
    # Mode changes are notes in the session's events, with the turn that followed them.
    stored = agent.store.events(session)
    changes = [(e.turn, e.data["mode"]) for e in stored if "mode" in (e.data or {})]
    assert changes == [
        (1, {"from": "accept-edits", "to": "plan"}),
        (2, {"from": "plan", "to": "accept-edits"}),
    ]
    conv = conversation_of(stored)  # notes are not part of the conversation
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    agent.send_sync("thanks")  # a later turn: no note any more
    assert engine.text.split("<|user|>")[3].startswith("thanks")


def test_a_resumed_plan_session_is_told_plan_mode_is_off(make_agent, workspace: Path) -> None:
    """Headless: `run --permission-mode plan`, then `run --resume ID --permission-mode ask`."""
    agent, _ = make_agent([f"{PLAN}<|end|>"], mode="plan")
    agent.send_sync("plan it")
    other, engine = make_agent(["Done.<|end|>"], mode="auto", session_id=agent.session_id)
    other.send_sync("go ahead")
    assert engine.text.split("<|user|>")[-1].startswith("[Plan mode is off (approval mode: auto)")


def test_tools_declare_read_only(tmp_path: Path) -> None:
    @tool(policy="auto", read_only=True)
    def peek(path: str) -> str:
        """Look at a path."""
        return path

    @tool(policy="auto")
    def poke(path: str) -> str:
        """Change a path."""
        return path

    reg = ToolRegistry(tmp_path, load_plugins=False, enable_commands=True)
    reg.register(peek)
    reg.register(poke)
    assert reg.read_only("peek") and not reg.read_only("poke")  # not said: counts as a writer
    assert not reg.read_only("run_command") and not reg.read_only("write_file")
    assert read_only_tools(reg) == ["read_file", "list_dir", "glob", "grep", "peek"]
    reg.set_policy("grep", "deny")  # not offered at all
    assert "grep" not in read_only_tools(reg)


def test_a_mode_change_without_a_later_turn_is_recorded_when_the_session_is_left(make_agent) -> None:
    agent, _ = make_agent(["One.<|end|>", "Two.<|end|>"])
    agent.send_sync("one")
    first = agent.session_id
    agent.mode = "plan"
    agent.new_session()  # left: the change goes to the session it happened in
    agent.send_sync("two")
    agent.mode = "auto"
    agent.close()  # closed: likewise
    modes = {
        sid: [(e.turn, e.data["mode"]["to"]) for e in agent.store.events(sid) if "mode" in (e.data or {})]
        for sid in (first, agent.session_id)
    }
    assert modes == {first: [(1, "plan")], agent.session_id: [(1, "auto")]}
