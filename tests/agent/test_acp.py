"""`hybrid-agent acp` (agent/acp_server.py) driven as an editor drives it: a real server process, the
official SDK's client side (tests/agent/acp_client.py). Servers are forked from a process that has
imported everything (tests/agent/acp_scripted.py); where a test needs a chosen tool call, the
server's model is the scripted engine, everything else as `hybrid-agent acp` runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acp import RequestError, text_block
from hybrid_agent.memory import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acp_client import ForkServer, Recorder, forked, pipes


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "a.txt").write_text("hello from a\n")
    return folder


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def argv(tmp: Path, *extra: str) -> list[str]:
    return ["acp", "--db", str(tmp / "sessions.db"), *extra]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def tool_updates(client: Recorder) -> list[Any]:
    return [u for _, u in client.updates if u.session_update in ("tool_call", "tool_call_update")]


def saved_turns(tmp: Path, session_id: str) -> int:
    with Store(str(tmp / "sessions.db")) as store:
        return store.get_session(session_id).latest_turn or 0


# ---- the real model ----------------------------------------------------------------------------------
def test_prompt_streams_the_answer_and_the_session_is_the_stores(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder()
    # Room for a call to close and a round after it: whether the model answers in words or calls a
    # tool first, the editor is shown what the store keeps.
    extra = ("--max-new-tokens", "48", "--max-tool-rounds", "2")

    async def go() -> tuple[str, Any]:
        async with forked(fork_server, client, tmp_path, argv(tmp_path, *extra)) as (conn, _):
            new = await conn.new_session(cwd=str(ws), mcp_servers=[])
            answer = await conn.prompt(session_id=new.session_id, prompt=[text_block("hello")])
            return new.session_id, answer

    session_id, answer = run(go())
    assert answer.stop_reason in ("end_turn", "max_tokens", "max_turn_requests")
    assert client.kinds() and set(client.kinds()) <= {"agent_message_chunk", "tool_call", "tool_call_update"}
    with Store(str(tmp_path / "sessions.db")) as store:
        info = store.get_session(session_id)
        events = store.events(session_id)
    assert Path(info.workspace) == ws.resolve() and info.latest_turn == 1
    assert client.text() == "".join(e.content for e in events if e.kind == "assistant")
    # Each call the store keeps was shown as it ran, with its arguments, and its result when it ended.
    starts = [u for _, u in client.updates if u.session_update == "tool_call"]
    calls = [e for e in events if e.kind == "tool_call"]
    assert [(u.tool_call_id, u.raw_input) for u in starts] == [
        (e.data["call_id"], e.data["arguments"]) for e in calls
    ]
    ends = [u for u in tool_updates(client) if u.status in ("completed", "failed")]
    assert [(u.tool_call_id, u.content[0].content.text) for u in ends] == [
        (e.data["call_id"], e.content) for e in events if e.kind == "tool_result"
    ]


# ---- scripted replies: tool calls, permissions, stop reasons -----------------------------------------
def scripted_session(
    fork_server: ForkServer,
    tmp: Path,
    ws: Path,
    client: Recorder,
    replies: list[str],
    prompts: list[str],
    *extra: str,
    step_delay: float = 0.0,
) -> tuple[str, list[Any]]:
    """One session, `prompts` sent in turn; (session id, each prompt's answer or error)."""

    async def go() -> tuple[str, list[Any]]:
        script = {"replies": replies, "step_delay": step_delay}
        async with forked(fork_server, client, tmp, argv(tmp, *extra), script) as (conn, _):
            new = await conn.new_session(cwd=str(ws), mcp_servers=[])
            answers: list[Any] = []
            for text in prompts:
                try:
                    answers.append(await conn.prompt(session_id=new.session_id, prompt=[text_block(text)]))
                except RequestError as exc:
                    answers.append(exc)
            return new.session_id, answers

    return run(go())


def test_an_approved_write_streams_its_call_permission_and_diff(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder(permission="allow_once")
    replies = [call("write_file", path="a.txt", content="changed\n"), "Done.<|end|>"]
    session_id, (answer,) = scripted_session(fork_server, tmp_path, ws, client, replies, ["change a"])
    assert answer.stop_reason == "end_turn"
    assert (ws / "a.txt").read_text() == "changed\n"
    start, running, end = tool_updates(client)
    assert start.session_update == "tool_call" and start.status == "pending"
    assert start.kind == "edit" and start.title == "Write a.txt"
    assert start.raw_input == {"path": "a.txt", "content": "changed\n"}
    (asked,) = client.asked
    assert asked.tool_call_id == start.tool_call_id
    assert (running.status, end.status) == ("in_progress", "completed")
    diff = next(c for c in end.content if c.type == "diff")
    assert (diff.path, diff.old_text, diff.new_text) == (str(ws / "a.txt"), "hello from a\n", "changed\n")
    assert client.kinds()[-1] == "agent_message_chunk" and client.text() == "Done."
    assert saved_turns(tmp_path, session_id) == 1


def test_a_rejected_write_does_not_run_and_its_call_fails(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder(permission="reject_once")
    replies = [call("write_file", path="new.txt", content="x\n"), "Not done.<|end|>"]
    _, (answer,) = scripted_session(fork_server, tmp_path, ws, client, replies, ["write new"])
    assert answer.stop_reason == "end_turn"
    assert not (ws / "new.txt").exists()
    start, end = tool_updates(client)
    assert (start.status, end.status) == ("pending", "failed")
    assert "did not approve" in end.content[0].content.text


def test_always_answers_stick_and_allow_always_is_saved_in_the_settings(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder(permission="allow_always")
    replies = [call("write_file", path="b.txt", content="1\n"), "One.<|end|>",
               call("write_file", path="b.txt", content="2\n"), "Two.<|end|>"]  # fmt: skip
    _, answers = scripted_session(fork_server, tmp_path, ws, client, replies, ["one", "two"])
    assert [a.stop_reason for a in answers] == ["end_turn", "end_turn"]
    assert len(client.asked) == 1 and (ws / "b.txt").read_text() == "2\n"
    assert "write_file" in (ws / ".hybrid-agent" / "settings.local.toml").read_text()

    client = Recorder(permission="reject_always")
    replies = [call("write_file", path="c.txt", content="1\n"), "No.<|end|>",
               call("write_file", path="c.txt", content="2\n"), "No again.<|end|>"]  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    _, answers = scripted_session(fork_server, tmp_path, other, client, replies, ["one", "two"])
    assert len(client.asked) == 1 and not (other / "c.txt").exists()
    assert [u.status for u in tool_updates(client) if u.session_update == "tool_call_update"] == [
        "failed"
    ] * 2


def test_stop_reasons(fork_server: ForkServer, tmp_path: Path, ws: Path) -> None:
    client = Recorder()
    replies = ["x" * 50 + "<|end|>"]
    _, (answer,) = scripted_session(
        fork_server, tmp_path, ws, client, replies, ["long"], "--max-new-tokens", "8"
    )
    assert answer.stop_reason == "max_tokens"
    rounds = [call("read_file", path="a.txt")] * 3 + ["Done.<|end|>"]
    _, (answer,) = scripted_session(
        fork_server, tmp_path, ws, client, rounds, ["read"], "--max-tool-rounds", "1"
    )
    assert answer.stop_reason == "max_turn_requests"
    ends = [u for u in tool_updates(client) if u.session_update == "tool_call_update"]
    assert len(ends) == len([u for u in tool_updates(client) if u.session_update == "tool_call"]) >= 1
    assert all(u.status == "completed" for u in ends)


def test_a_plan_is_a_plan_update(fork_server: ForkServer, tmp_path: Path, ws: Path) -> None:
    client = Recorder()
    entries = [{"content": "read a", "status": "completed"}, {"content": "fix a", "priority": "high"}]
    replies = [call("update_plan", entries=entries), "Planned.<|end|>"]
    _, (answer,) = scripted_session(fork_server, tmp_path, ws, client, replies, ["plan"])
    assert answer.stop_reason == "end_turn"
    (plan,) = [u for _, u in client.updates if u.session_update == "plan"]
    assert [(e.content, e.status, e.priority) for e in plan.entries] == [
        ("read a", "completed", "medium"),
        ("fix a", "pending", "high"),
    ]
    assert tool_updates(client) == []


# ---- cancels -----------------------------------------------------------------------------------------
def test_cancel_while_decoding_ends_the_turn_and_keeps_the_session(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder()
    replies = ["First.<|end|>", "y" * 2000 + "<|end|>", "Third.<|end|>"]

    async def go() -> tuple[str, list[Any], float]:
        script = {"replies": replies, "step_delay": 0.005}
        async with forked(fork_server, client, tmp_path, argv(tmp_path), script) as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            first = await conn.prompt(session_id=sid, prompt=[text_block("one")])
            turn = asyncio.ensure_future(conn.prompt(session_id=sid, prompt=[text_block("two")]))
            while "y" not in client.text():
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await conn.cancel(session_id=sid)
            second = await turn
            took = time.monotonic() - t0
            n = len(client.updates)
            await asyncio.sleep(0.2)
            assert len(client.updates) == n  # nothing streamed after the answer
            third = await conn.prompt(session_id=sid, prompt=[text_block("three")])
            return sid, [first, second, third], took

    sid, answers, took = run(go())
    assert [a.stop_reason for a in answers] == ["end_turn", "cancelled", "end_turn"]
    assert took < 2.0
    with Store(str(tmp_path / "sessions.db")) as store:
        events = store.events(sid)
    assert [e.content for e in events if e.kind == "user"] == [
        "one",
        "three",
    ]  # the cancelled turn left nothing
    assert saved_turns(tmp_path, sid) == 2


def test_cancel_before_the_turn_starts(fork_server: ForkServer, tmp_path: Path, ws: Path) -> None:
    """The prompt and its cancel in one write: the turn ends `cancelled` before the model decodes a
    token, and the session goes on with the reply the cancelled turn never used."""
    _pid, fin, fout = fork_server.start(tmp_path, argv(tmp_path), {"replies": ["Never.<|end|>"]})

    def request(n: int, method: str, **params: Any) -> str:
        return json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}) + "\n"

    async def answer(reader: asyncio.StreamReader, n: int, seen: list[dict[str, Any]]) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(reader.readline(), 30))
            if message.get("id") == n:
                return message
            seen.append(message)

    async def go() -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        writer, reader = await pipes(fin, fout)
        writer.write(request(1, "initialize", protocolVersion=1).encode())
        writer.write(request(2, "session/new", cwd=str(ws), mcpServers=[]).encode())
        await answer(reader, 1, [])
        sid = (await answer(reader, 2, []))["result"]["sessionId"]
        prompt = request(3, "session/prompt", sessionId=sid, prompt=[{"type": "text", "text": "one"}])
        cancel = json.dumps({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}})
        writer.write((prompt + cancel + "\n").encode())
        first: list[dict[str, Any]] = []
        results = [(await answer(reader, 3, first))["result"]]
        writer.write(
            request(4, "session/prompt", sessionId=sid, prompt=[{"type": "text", "text": "two"}]).encode()
        )
        second: list[dict[str, Any]] = []
        results.append((await answer(reader, 4, second))["result"])
        writer.close()
        return sid, results, [first, second]

    sid, results, (first, second) = run(go())
    assert [r["stopReason"] for r in results] == ["cancelled", "end_turn"]
    assert first == []  # nothing was streamed for the cancelled turn
    assert "".join(m["params"]["update"]["content"]["text"] for m in second) == "Never."
    assert saved_turns(tmp_path, sid) == 1


@pytest.mark.parametrize("how", ["cancel", "cancelled-outcome"])
def test_cancel_with_a_permission_request_pending(
    fork_server: ForkServer, tmp_path: Path, ws: Path, how: str
) -> None:
    client = Recorder(permission="wait" if how == "cancel" else "cancelled")
    replies = [call("write_file", path="new.txt", content="x\n"), "Never.<|end|>", "After.<|end|>"]

    async def go() -> tuple[str, Any, Any]:
        async with forked(fork_server, client, tmp_path, argv(tmp_path), {"replies": replies}) as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            turn = asyncio.ensure_future(conn.prompt(session_id=sid, prompt=[text_block("write")]))
            await client.asking.wait()
            if how == "cancel":
                await conn.cancel(session_id=sid)
            cancelled = await turn
            client.permission = "allow_once"
            after = await conn.prompt(session_id=sid, prompt=[text_block("again")])
            return sid, cancelled, after

    sid, cancelled, after = run(go())
    assert cancelled.stop_reason == "cancelled"
    assert not (ws / "new.txt").exists()
    start, end, *_ = tool_updates(client)
    assert start.tool_call_id == end.tool_call_id and end.status == "failed"
    assert after.stop_reason == "end_turn" and saved_turns(tmp_path, sid) == 1


# ---- the editor's files ------------------------------------------------------------------------------
def test_file_tools_go_through_the_editor_when_it_offers_them(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    a = str(ws / "a.txt")
    client = Recorder(permission="allow_once", buffers={a: "unsaved text of a\n"})
    replies = [call("read_file", path="a.txt"), "Read.<|end|>",
               call("edit_file", path="a.txt", old_string="unsaved", new_string="edited"), "Edited.<|end|>",
               call("write_file", path="sub/b.txt", content="b\n"), "Wrote.<|end|>"]  # fmt: skip
    sid, answers = scripted_session(
        fork_server, tmp_path, ws, client, replies, ["read a", "edit a", "write b"]
    )
    assert [a.stop_reason for a in answers] == ["end_turn"] * 3
    ends = [
        u
        for u in tool_updates(client)
        if u.session_update == "tool_call_update" and u.status != "in_progress"
    ]
    assert [u.status for u in ends] == ["completed"] * 3
    assert "unsaved text of a" in ends[0].content[0].content.text
    assert client.writes == [(a, "edited text of a\n"), (str(ws / "sub" / "b.txt"), "b\n")]
    diff = next(c for c in ends[1].content if c.type == "diff")
    assert (diff.old_text, diff.new_text) == ("unsaved text of a\n", "edited text of a\n")
    # The disk is the editor's to write: untouched; the edits are still in the session's file changes.
    assert (ws / "a.txt").read_text() == "hello from a\n" and not (ws / "sub").exists()
    with Store(str(tmp_path / "sessions.db")) as store:
        assert [c.path for c in store.file_changes(sid)] == ["a.txt", "sub/b.txt"]


def test_a_path_outside_the_workspace_is_refused_without_asking_the_editor(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    (tmp_path / "secret.txt").write_text("secret\n")
    client = Recorder(permission="allow_once", buffers={})
    replies = [call("read_file", path=str(tmp_path / "secret.txt")), "No.<|end|>"]
    _, (answer,) = scripted_session(fork_server, tmp_path, ws, client, replies, ["read"])
    assert answer.stop_reason == "end_turn" and client.reads == []
    assert tool_updates(client)[-1].status == "failed"


# ---- a killed server, and session/load -----------------------------------------------------------------
def _texts(client: Recorder, start: int = 0) -> str:
    return "".join(
        u.content.text for _, u in client.updates[start:] if u.session_update == "agent_message_chunk"
    )


# Two turns the packaged model answers in words within 12 tokens (a greeting it may take for a task).
FIRST, SECOND = "thanks", "My dog is called Rex."


@pytest.mark.slow  # three servers load the model: ~8 s on a busy 2-core machine
def test_load_after_a_kill_continues_exactly_as_an_uninterrupted_session(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    options = argv(tmp_path, "--max-new-tokens", "12")

    async def uninterrupted() -> tuple[str, str]:
        client = Recorder()
        async with forked(fork_server, client, tmp_path, options) as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            await conn.prompt(session_id=sid, prompt=[text_block(FIRST)])
            first = _texts(client)
            client.clear()
            await conn.prompt(session_id=sid, prompt=[text_block(SECOND)])
            return first, _texts(client)

    async def killed() -> str:
        async with forked(fork_server, Recorder(), tmp_path, options) as (conn, pid):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            await conn.prompt(session_id=sid, prompt=[text_block(FIRST)])
            os.kill(pid, signal.SIGKILL)
            return str(sid)

    async def loaded(sid: str) -> tuple[Recorder, str]:
        client = Recorder()
        async with forked(fork_server, client, tmp_path, options) as (conn, _):
            await conn.load_session(session_id=sid, cwd=str(ws), mcp_servers=[])
            replayed = list(client.updates)
            client.clear()
            await conn.prompt(session_id=sid, prompt=[text_block(SECOND)])
            client.updates[:0] = replayed
            return client, _texts(client, len(replayed))

    first, second = run(uninterrupted())
    sid = run(killed())
    client, continued = run(loaded(sid))
    replay = [(u.session_update, u.content.text) for _, u in client.updates[:2]]
    assert first and second  # the premise: both turns answered in words, which the replay shows
    assert replay == [("user_message_chunk", FIRST), ("agent_message_chunk", first)]
    assert continued == second
    assert saved_turns(tmp_path, sid) == 2


def test_load_after_a_kill_replays_tool_calls_and_refuses_an_unknown_session(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    replies = [call("write_file", path="b.txt", content="b\n"), "Made b.<|end|>", "Again.<|end|>"]

    async def killed() -> str:
        options = argv(tmp_path, "--permission-mode", "auto")
        async with forked(fork_server, Recorder(), tmp_path, options, {"replies": replies}) as (conn, pid):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            assert (
                await conn.prompt(session_id=sid, prompt=[text_block("make b")])
            ).stop_reason == "end_turn"
            os.kill(pid, signal.SIGKILL)
            return str(sid)

    client = Recorder()

    async def loaded(sid: str) -> tuple[Any, Any, Any]:
        async with forked(fork_server, client, tmp_path, argv(tmp_path), {"replies": ["Again.<|end|>"]}) as (
            conn,
            _,
        ):
            await conn.load_session(session_id=sid, cwd=str(ws), mcp_servers=[])
            with pytest.raises(RequestError) as unknown:
                await conn.load_session(session_id="no-such-session", cwd=str(ws), mcp_servers=[])
            with pytest.raises(RequestError) as prompt:
                await conn.prompt(session_id="no-such-session", prompt=[text_block("hi")])
            replayed = list(client.kinds())
            again = await conn.prompt(session_id=sid, prompt=[text_block("again")])
            return unknown.value, prompt.value, (replayed, again)

    sid = run(killed())
    unknown, prompt, (replayed, again) = run(loaded(sid))
    assert "no-such-session" in str(unknown) and "unknown session" in str(prompt)
    assert replayed == ["user_message_chunk", "tool_call", "tool_call_update", "agent_message_chunk"]
    assert tool_updates(client)[1].status == "completed" and client.text() == "Made b.Again."
    assert again.stop_reason == "end_turn" and saved_turns(tmp_path, sid) == 2


# ---- bad input, stdout, MCP servers ----------------------------------------------------------------------
def test_bad_lines_get_errors_and_the_server_keeps_serving(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    pid, fin, fout = fork_server.start(tmp_path, argv(tmp_path), {"replies": []})
    lines = [
        "not json at all",
        "[1, 2]",
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "no/such_method", "params": {}}),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": 1}}),
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
                    "params": {"sessionId": "nope", "prompt": [{"type": "text", "text": "hi"}]}}),
        json.dumps({"jsonrpc": "2.0", "id": 4, "method": "session/new",
                    "params": {"cwd": "rel", "mcpServers": []}}),
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "session/new",
                    "params": {"cwd": str(ws), "mcpServers": []}}),
    ]  # fmt: skip

    async def go() -> list[dict[str, Any]]:
        writer, reader = await pipes(fin, fout)
        writer.write(("\n".join(lines) + "\n").encode())
        await writer.drain()
        got = [json.loads(await asyncio.wait_for(reader.readline(), 30)) for _ in lines]
        writer.close()
        assert await asyncio.wait_for(reader.read(), 30) == b""  # stdin closed: the server exits
        return got

    got = run(go())
    assert all(m["jsonrpc"] == "2.0" for m in got)
    nulls = [m["error"]["code"] for m in got if m["id"] is None]
    assert nulls == [-32700, -32600]
    by_id = {m["id"]: m for m in got if m["id"] is not None}
    assert by_id[1]["error"]["code"] == -32601
    assert by_id[2]["result"]["protocolVersion"] == 1
    assert by_id[2]["result"]["agentCapabilities"]["loadSession"] is True
    assert "unknown session" in by_id[3]["error"]["message"]
    assert "not an absolute path" in by_id[4]["error"]["message"]
    assert by_id[5]["result"]["sessionId"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server did not exit after its stdin closed")


def test_mcp_servers_the_editor_passes_are_mounted(fork_server: ForkServer, tmp_path: Path, ws: Path) -> None:
    from acp.schema import McpServerStdio

    echo = str(Path(__file__).resolve().parents[1] / "tools" / "mcp_echo_server.py")
    server = McpServerStdio(name="echo", command=sys.executable, args=[echo], env=[])
    client = Recorder()
    replies = [call("echo__shout", text="quiet"), "Shouted.<|end|>"]

    async def go() -> Any:
        options = argv(tmp_path, "--permission-mode", "auto")
        async with forked(fork_server, client, tmp_path, options, {"replies": replies}) as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[server])).session_id
            return await conn.prompt(session_id=sid, prompt=[text_block("shout")])

    assert run(go()).stop_reason == "end_turn"
    start, end = tool_updates(client)
    assert start.raw_input == {"text": "quiet"} and end.status == "completed"
    assert "QUIET" in end.content[0].content.text


@pytest.mark.slow  # a new interpreter imports torch and loads the model: ~15 s on a busy 2-core machine
def test_the_command_itself_over_stdio(tmp_path: Path, ws: Path) -> None:
    from acp_client import connect

    client = Recorder()

    async def go() -> Any:
        command = ["-m", "hybrid_agent", *argv(tmp_path, "--max-new-tokens", "8")]
        async with connect(client, *command, cwd=ws, log=tmp_path / "stderr.log") as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            return await conn.prompt(session_id=sid, prompt=[text_block(FIRST)])  # answered in words

    assert run(go()).stop_reason in ("end_turn", "max_tokens")
    assert client.kinds() and set(client.kinds()) == {"agent_message_chunk"}


def _request(n: int, method: str, **params: Any) -> bytes:
    return (json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}) + "\n").encode()


def test_stdout_carries_only_protocol_messages(fork_server: ForkServer, tmp_path: Path, ws: Path) -> None:
    """Prints and writes to descriptor 1 while the model decodes end up in the log, not in the protocol."""
    _, fin, fout = fork_server.start(
        tmp_path, argv(tmp_path), {"replies": ["Hi there.<|end|>"], "noise": True}
    )

    async def go() -> list[bytes]:
        writer, reader = await pipes(fin, fout)
        writer.write(_request(1, "initialize", protocolVersion=1))
        writer.write(_request(2, "session/new", cwd=str(ws), mcpServers=[]))
        lines = [await asyncio.wait_for(reader.readline(), 30) for _ in range(2)]
        sid = next(json.loads(x)["result"]["sessionId"] for x in lines if b"sessionId" in x)
        writer.write(_request(3, "session/prompt", sessionId=sid, prompt=[{"type": "text", "text": "hi"}]))
        while b'"id":3' not in lines[-1]:
            lines.append(await asyncio.wait_for(reader.readline(), 30))
        writer.close()
        return lines + (await asyncio.wait_for(reader.read(), 30)).splitlines()

    messages = [json.loads(line) for line in run(go())]  # every line is JSON
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    assert next(m for m in messages if m.get("id") == 3)["result"]["stopReason"] == "end_turn"
    log = (tmp_path / "stderr.log").read_text()
    assert "noise from print" in log and "noise on fd 1" in log


def test_a_failed_turn_is_a_json_rpc_error_and_a_busy_session_refuses_a_second_prompt(
    fork_server: ForkServer, tmp_path: Path, ws: Path
) -> None:
    client = Recorder()
    script = {"replies": ["z" * 300 + "<|end|>", "Fine.<|end|>"], "step_delay": 0.002}

    async def go() -> tuple[Any, Any, Any, Any]:
        options = argv(tmp_path, "--max-prompt-tokens", "20000")  # the scripted tokens are bytes
        async with forked(fork_server, client, tmp_path, options, script) as (conn, _):
            sid = (await conn.new_session(cwd=str(ws), mcp_servers=[])).session_id
            with pytest.raises(RequestError) as too_long:
                await conn.prompt(session_id=sid, prompt=[text_block("w" * 25000)])
            turn = asyncio.ensure_future(conn.prompt(session_id=sid, prompt=[text_block("one")]))
            while not client.updates and not turn.done():
                await asyncio.sleep(0.01)
            with pytest.raises(RequestError) as busy:
                await conn.prompt(session_id=sid, prompt=[text_block("two")])
            first = await turn
            second = await conn.prompt(session_id=sid, prompt=[text_block("three")])
            return too_long.value, busy.value, first, second

    too_long, busy, first, second = run(go())
    assert too_long.code == -32603 and "tokens" in str(too_long)
    assert "already running a prompt" in str(busy)
    assert (first.stop_reason, second.stop_reason) == ("end_turn", "end_turn")


def test_the_transport_answers_bad_lines_in_bounded_memory() -> None:
    from hybrid_agent.agent.acp_transport import LineTransport

    async def go() -> tuple[list[Any], list[dict[str, Any]]]:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        transport = LineTransport(r_in, w_out, max_line_bytes=64)
        good = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {}}
        data = b"x" * 200 + b"\n" + b"{bad\n" + b'{"id": {"no": 1}}\n' + json.dumps(good).encode() + b"\n"
        os.write(w_in, data)
        os.close(w_in)
        received = [await transport.receive(), await transport.receive()]
        await transport.close()
        os.close(w_out)
        with os.fdopen(r_out, "rb") as out:
            return received, [json.loads(line) for line in out.read().splitlines()]

    received, errors = run(go())
    assert received[0]["id"] == 1 and received[1] is None
    assert [(e["id"], e["error"]["code"]) for e in errors] == [(None, -32700), (None, -32700), (None, -32600)]


@pytest.mark.parametrize(
    ("option", "said"),
    [(["--model", "/no/such/model"], "no model at /no/such/model"), (["--device", "tpu9"], "--device tpu9")],
)
def test_bad_options_fail_at_start_in_one_line(
    fork_server: ForkServer, tmp_path: Path, option: list[str], said: str
) -> None:
    _, fin, fout = fork_server.start(tmp_path, argv(tmp_path, *option))

    async def go() -> bytes:
        writer, reader = await pipes(fin, fout)
        out = await asyncio.wait_for(reader.read(), 30)  # the server exits without reading anything
        writer.close()
        return out

    assert run(go()) == b""
    (line,) = (tmp_path / "stderr.log").read_text().splitlines()
    assert line.startswith("hybrid-agent: error: ") and said in line
