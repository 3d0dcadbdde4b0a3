"""`hybrid-agent mcp add|list|get|remove` (agent/mcp_commands.py) and the settings' MCP servers
mounted when the agent opens (agent/mcp_servers.py), through the real entry point, against the small
MCP server of tests/tools/mcp_echo_server.py (stdio, and streamable HTTP on a local port)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hybrid_agent.cli import main

SERVER = str(Path(__file__).resolve().parents[1] / "tools" / "mcp_echo_server.py")


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mcp(capsys: pytest.CaptureFixture[str], ws: Path, *argv: str) -> tuple[int, str, str]:
    """`hybrid-agent mcp ARGV... --workspace WS`."""
    return call(capsys, "mcp", *argv[:1], "--workspace", str(ws), *argv[1:])


def test_add_list_get_remove(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = ws / ".hybrid-agent" / "settings.local.toml"
    local.parent.mkdir()
    local.write_text("# my settings\ntemperature = 0.5\n")
    code, out, _ = call(capsys, "mcp", "add", "--workspace", str(ws), "echo", "--", sys.executable, SERVER)
    assert code == 0 and f"added MCP server echo to {local}" in out
    text = local.read_text()
    assert text.startswith("# my settings\ntemperature = 0.5\n")  # the file's other content is kept
    assert tomllib.loads(text)["mcp_servers"] == {"echo": {"command": sys.executable, "args": [SERVER]}}

    code, out, err = mcp(capsys, ws, "list")
    assert code == 0 and err == ""
    assert out.strip().endswith(f"echo: {sys.executable} {SERVER} (stdio) [local] - connected, 5 tool(s)")
    code, out, _ = call(capsys, "mcp", "get", "echo", "--workspace", str(ws))
    assert code == 0 and "scope: local" in out and json.dumps([SERVER]) in out

    code, out, _ = call(capsys, "mcp", "remove", "echo", "--workspace", str(ws))
    assert code == 0 and "removed MCP server echo" in out
    assert tomllib.loads(local.read_text()) == {"temperature": 0.5}
    code, _, err = call(capsys, "mcp", "get", "echo", "--workspace", str(ws))
    assert code == 1 and "no MCP server 'echo'" in err
    code, _, err = call(capsys, "mcp", "remove", "echo", "--workspace", str(ws))
    assert code == 1 and "no MCP server 'echo'" in err


def test_list_shows_a_broken_servers_error(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, "mcp", "add", "--workspace", str(ws), "bad", "--", str(ws / "no-such-server"))[0] == 0
    call(capsys, "mcp", "add", "--workspace", str(ws), "echo", "--", sys.executable, SERVER)
    code, out, _ = call(capsys, "mcp", "list", "--workspace", str(ws), "--timeout", "20")
    assert code == 0
    bad, echo = out.splitlines()
    assert bad.startswith("bad: ") and " - failed: MCP server 'bad' " in bad and "did not start" in bad
    assert echo.endswith("connected, 5 tool(s)")


def test_variables_are_expanded_when_the_server_starts(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECHO_SERVER", raising=False)
    argv = ["mcp", "add", "--workspace", str(ws), "--scope", "project", "echo", "--env", "TOKEN=${SECRET}"]
    assert call(capsys, *argv, "--", sys.executable, "${ECHO_SERVER}")[0] == 0
    saved = tomllib.loads((ws / ".hybrid-agent" / "settings.toml").read_text())["mcp_servers"]["echo"]
    assert saved["args"] == ["${ECHO_SERVER}"] and saved["env"] == {"TOKEN": "${SECRET}"}  # as written
    monkeypatch.setenv("ECHO_SERVER", SERVER)
    out = call(capsys, "mcp", "list", "--workspace", str(ws))[1]
    assert out.strip().endswith("failed: MCP server 'echo': ${SECRET} is not set in the environment")
    monkeypatch.setenv("SECRET", "s3cret")
    out = call(capsys, "mcp", "list", "--workspace", str(ws))[1]
    assert out.strip().endswith("[project] - connected, 5 tool(s)")


def test_only_a_server_the_user_added_applies_in_an_untrusted_folder(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = ws / ".hybrid-agent" / "settings.toml"
    project.parent.mkdir()
    cloned = f"[mcp_servers.cloned]\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}]\n"
    project.write_text(cloned)
    _, out, err = mcp(capsys, ws, "list")
    assert out.startswith("no MCP servers") and "ignored mcp_servers" in err  # came with the clone
    mcp(capsys, ws, "add", "--scope", "project", "mine", "--", sys.executable, SERVER)
    _, out, err = mcp(capsys, ws, "list")
    assert [line.split(":")[0] for line in out.splitlines()] == ["mine"]
    assert "ignored mcp_servers cloned" in err
    project.write_text(project.read_text().replace(json.dumps(SERVER), json.dumps(SERVER + "x")))
    out = call(capsys, "mcp", "list", "--workspace", str(ws))[1]
    assert out.startswith("no MCP servers")  # an entry changed after `mcp add` is no longer approved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_streamable_http_server(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the HTTP server did not start"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/mcp"
        argv = ["mcp", "add", "--workspace", str(ws), "--transport", "http", "web", url]
        assert call(capsys, *argv, "--header", "X-Token: ${WEB_TOKEN}")[0] == 0
        saved = tomllib.loads((ws / ".hybrid-agent" / "settings.local.toml").read_text())["mcp_servers"]
        assert saved == {"web": {"transport": "http", "url": url, "headers": {"X-Token": "${WEB_TOKEN}"}}}
        monkeypatch.setenv("WEB_TOKEN", "t")
        out = call(capsys, "mcp", "list", "--workspace", str(ws))[1]
        assert out.strip() == f"web: {url} (http) [local] - connected, 5 tool(s)"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_failing_server_does_not_stop_run_and_rules_name_mcp_tools(
    ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    scripted_engine: Any,
) -> None:  # fmt: skip
    call(capsys, "mcp", "add", "--workspace", str(ws), "bad", "--", str(ws / "no-such-server"))
    call(capsys, "mcp", "add", "--workspace", str(ws), "echo", "--", sys.executable, SERVER)
    local = ws / ".hybrid-agent" / "settings.local.toml"
    local.write_text(local.read_text() + '\n[permissions]\ndeny = ["mcp__echo__shout"]\n')

    def tool_call(name: str, arguments: dict[str, Any]) -> str:
        return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"

    replies = [tool_call("echo__shout", {"text": "hi"}), tool_call("echo__add", {"a": 2, "b": 3}), "done"]
    monkeypatch.setattr("hybrid_agent.agent.factory.load_engine", lambda *a, **k: scripted_engine(replies))
    db = str(tmp_path / "s.db")
    code, out, err = call(capsys, "run", "go", "--workspace", str(ws), "--db", db, "--yes", "--json")
    assert code == 0
    [warning] = [line for line in err.splitlines() if "bad" in line]
    assert warning.startswith("hybrid-agent: warning: MCP server 'bad'") and "goes on without it" in warning
    results = [
        block
        for e in map(json.loads, out.splitlines())
        if e["type"] == "user"
        for block in e["message"]["content"]
        if block["type"] == "tool_result"
    ]  # stream-json: each tool result is a user message's tool_result block (docs/headless.md)
    shout, add = results
    assert shout["is_error"] and "denied by the deny rule `mcp__echo__shout`" in shout["content"]  # --yes too
    assert (add["content"], add["is_error"]) == ("5", False)  # the server's other tool ran
