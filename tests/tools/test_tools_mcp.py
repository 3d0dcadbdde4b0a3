"""MCP: a real stdio server (tests/tools/mcp_echo_server.py, built on the SDK's MCPServer) mounted
into the registry; its results and errors map onto ToolResult and its tools default to `ask`."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from hybrid_agent.tools import MCPServerError, ToolRegistry, ToolResult

SERVER = str(Path(__file__).with_name("mcp_echo_server.py"))


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    ws = tmp_path_factory.mktemp("mcp_ws")
    reg = ToolRegistry(ws, load_plugins=False)
    names = reg.mount_mcp("echo", sys.executable, [SERVER])
    yield reg, names
    reg.close()


def test_tools_are_listed_with_schemas_and_ask_policy(mounted):
    reg, names = mounted
    assert names == ["echo__add", "echo__shout", "echo__fail", "echo__nap", "echo__crash"]
    add = reg.get("echo__add")
    assert add.source == "mcp:echo" and reg.policy("echo__add") == "ask"
    assert add.annotations.read_only_hint is True  # not trusted for the policy (still asks) ...
    # ... only for plan mode (agent/plan.py): a tool without readOnlyHint counts as a writer.
    assert reg.read_only("echo__add") and not reg.read_only("echo__shout")
    schema = next(s for s in reg.schemas() if s["function"]["name"] == "echo__add")
    assert schema["function"]["description"] == "Add two integers."
    assert schema["function"]["parameters"] == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }


def test_calls_map_onto_results(mounted):
    reg, _ = mounted
    assert reg.call("echo__add", {"a": 2, "b": 40}) == ToolResult("42", data={"result": 42})
    assert reg.call("echo__shout", {"text": "hi"}).text == "HI"
    denied = reg.call("echo__add", {"a": 1, "b": 1}, approve=False)
    assert denied.denied and denied.is_error


def test_server_errors_and_bad_arguments_are_error_results(mounted):
    reg, _ = mounted
    res = reg.call("echo__fail", {"message": "nope"})
    assert res.is_error and "Error executing tool fail" in res.text
    res = reg.call("echo__add", {"a": 1})
    assert res.is_error and res.text == "Invalid arguments for echo__add: b: required"
    res = reg.call("echo__add", {"a": 1, "b": True})
    assert res.is_error and "b: expected integer, got bool" in res.text
    p = reg.preview("echo__add", {"a": 1, "b": 2})
    assert p.summary == 'call add on MCP server echo with {"a": 1, "b": 2}'


def test_call_timeout_and_concurrent_calls(mounted):
    reg, _ = mounted
    conn = reg.get("echo__nap").conn
    conn.timeout_s = 1  # per-call timeout (mount_mcp's timeout_s); lowered here to spare a server start
    try:
        t0 = time.monotonic()
        res = reg.call("echo__nap", {"seconds": 20})
        assert res.is_error and "timed out" in res.text and time.monotonic() - t0 < 5
    finally:
        conn.timeout_s = 60
    # The session survives a timed-out request, and calls from many threads are fine.
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = reg.call("echo__add", {"a": i, "b": 100}).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i + 100) for i in range(8)}


def test_server_that_dies_mid_session(tmp_path):
    with ToolRegistry(tmp_path, load_plugins=False) as reg:
        reg.mount_mcp("dying", sys.executable, [SERVER])
        res = reg.call("dying__crash", {})
        assert res.is_error and "dying" in res.text
        after = reg.call("dying__shout", {"text": "x"})
        assert after.is_error and "MCP server 'dying'" in after.text


def test_server_that_does_not_start(tmp_path):
    reg = ToolRegistry(tmp_path, load_plugins=False)
    script = "import sys; print('missing API key', file=sys.stderr); sys.exit(2)"
    with pytest.raises(MCPServerError) as err:
        reg.mount_mcp("bad", sys.executable, ["-c", script], timeout_s=20)
    assert "MCP server 'bad'" in str(err.value) and "did not start" in str(err.value)
    assert "missing API key" in str(err.value)
    with pytest.raises(MCPServerError, match="did not start"):
        reg.mount_mcp("nothere", "/nonexistent/mcp-server")
    assert reg.names() == ToolRegistry(tmp_path, load_plugins=False).names()


def test_mounting_the_same_server_name_twice_is_refused(mounted):
    reg, _ = mounted
    with pytest.raises(MCPServerError, match="tool names already in use: echo__add"):
        reg.mount_mcp("echo", sys.executable, [SERVER])
    assert reg.call("echo__add", {"a": 1, "b": 1}).text == "2"  # the first one still works
