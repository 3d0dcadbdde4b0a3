"""The direct translations of agent/acp_updates.py, on the SDK's own schema models."""

from __future__ import annotations

import pytest
from acp import helpers
from acp.schema import EnvVariable, HttpHeader, HttpMcpServer, McpServerStdio, SseMcpServer
from hybrid_agent.agent import acp_updates as up
from hybrid_agent.agent.errors import AgentError


def test_prompt_blocks_become_the_message() -> None:
    blocks = [
        helpers.text_block("fix this"),
        helpers.resource_link_block("a.py", "file:///w/a.py"),
        helpers.resource_block(helpers.embedded_text_resource("file:///w/b.py", "x = 1")),
    ]
    assert up.prompt_text(blocks) == "fix this\n\n@file:///w/a.py\n\nfile:///w/b.py:\n```\nx = 1\n```"
    with pytest.raises(AgentError, match="text only"):
        up.prompt_text([helpers.image_block("AAAA", "image/png")])
    with pytest.raises(AgentError, match="empty"):
        up.prompt_text([helpers.text_block("  ")])


def test_editor_mcp_servers_become_settings_entries() -> None:
    servers = [
        McpServerStdio(name="local", command="srv", args=["--x"], env=[EnvVariable(name="K", value="v")]),
        HttpMcpServer(
            type="http", name="web", url="https://h/mcp", headers=[HttpHeader(name="A", value="b")]
        ),
        SseMcpServer(type="sse", name="old", url="https://h/sse", headers=[]),
    ]
    entries, skipped = up.mcp_entries(servers)
    assert entries == {
        "local": {"command": "srv", "args": ["--x"], "env": {"K": "v"}},
        "web": {"transport": "http", "url": "https://h/mcp", "headers": {"A": "b"}},
    }
    assert len(skipped) == 1 and "'old'" in skipped[0] and "sse" in skipped[0]


def test_answers_and_stop_reasons() -> None:
    assert [o.option_id for o in up.PERMISSION_OPTIONS] == [o.kind for o in up.PERMISSION_OPTIONS] == [
        "allow_once", "allow_always", "reject_once", "reject_always",
    ]  # fmt: skip
    decisions = [up.decision_of(o.option_id) for o in up.PERMISSION_OPTIONS]
    assert [(d.allow, d.always) for d in decisions] == [
        (True, False), (True, True), (False, False), (False, True),
    ]  # fmt: skip
    assert {r: up.stop_reason(r) for r in up.STOP_REASONS} == {
        "end_of_turn": "end_turn", "max_tokens": "max_tokens",
        "max_tool_rounds": "max_turn_requests", "cancelled": "cancelled",
    }  # fmt: skip
