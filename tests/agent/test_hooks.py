"""Hooks (agent/hooks.py) and where the turn runs them (agent/loop.py, agent/toolcalls.py,
agent/sessions.py). The hook commands are small Python programs run with this interpreter."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.events import ErrorEvent, HookNotice, ToolResultEvent, TurnEnd
from hybrid_agent.agent.hooks import Hook, Hooks
from hybrid_agent.agent.records import conversation_of
from hybrid_agent.agent.settings import load_settings, trust


def py(code: str) -> str:
    """A shell command running `code` with this Python."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def hooks(workspace: Path, event: str, code: str, matcher: str | None = None, timeout: float = 60) -> Hooks:
    import re

    pattern = None if matcher is None else re.compile(matcher)
    return Hooks(workspace, [Hook(event, py(code), pattern, timeout)])


def call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def write_b() -> list[str]:
    return [call("write_file", path="b.txt", content="x"), "OK.<|end|>"]


# Saves what the hook read on stdin to the file named by its first argument... written inline:
SAVE_STDIN = "import sys, pathlib; pathlib.Path({path!r}).write_text(sys.stdin.read())"


def test_pre_tool_use_exit_2_blocks_and_the_model_reads_the_reason(make_agent, workspace: Path) -> None:
    code = "import sys; sys.stderr.write('edits to b.txt are frozen'); sys.exit(2)"
    h = hooks(workspace, "PreToolUse", code, matcher="write_file|edit_file")
    agent, engine = make_agent(write_b(), mode="auto", hooks=h)
    events = agent.send_sync("write b")
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.is_error and result.denied
    assert "a PreToolUse hook blocked this write_file call" in result.text
    assert "edits to b.txt are frozen" in result.text and result.text in engine.text  # the model read it
    assert not (workspace / "b.txt").exists()
    notice = next(e for e in events if isinstance(e, HookNotice))
    assert notice.blocked and notice.exit_code == 2 and "edits to b.txt are frozen" in notice.message


def test_pre_tool_use_exit_0_lets_the_call_run(make_agent, workspace: Path, tmp_path: Path) -> None:
    seen = tmp_path / "pre.json"
    h = hooks(workspace, "PreToolUse", SAVE_STDIN.format(path=str(seen)))
    agent, _ = make_agent(write_b(), mode="auto", hooks=h)
    events = agent.send_sync("write b")
    assert (workspace / "b.txt").read_text() == "x"
    assert not any(isinstance(e, HookNotice) and e.message for e in events)
    data = json.loads(seen.read_text())
    assert data["hook_event_name"] == "PreToolUse" and data["tool_name"] == "write_file"
    assert data["tool_input"] == {"path": "b.txt", "content": "x"}
    assert data["session_id"] == agent.session_id and data["workspace"] == str(workspace.resolve())


def test_post_tool_use_receives_the_tool_response(make_agent, workspace: Path, tmp_path: Path) -> None:
    seen = tmp_path / "post.json"
    h = hooks(workspace, "PostToolUse", SAVE_STDIN.format(path=str(seen)))
    agent, _ = make_agent([call("read_file", path="a.txt"), "OK.<|end|>"], mode="auto", hooks=h)
    agent.send_sync("read a")
    data = json.loads(seen.read_text())
    assert data["hook_event_name"] == "PostToolUse" and data["tool_name"] == "read_file"
    assert "hello from a" in data["tool_response"]["text"] and data["tool_response"]["is_error"] is False


def test_user_prompt_submit_context_reaches_the_model(make_agent, workspace: Path) -> None:
    h = hooks(workspace, "UserPromptSubmit", "print('the build is red on main')")
    agent, engine = make_agent(["OK.<|end|>"], hooks=h)
    agent.send_sync("what should I fix?")
    # In the user's turn, before the message.
    assert "<|user|>the build is red on main\n\nwhat should I fix?<|end|>" in engine.text
    # Recorded with the user's message, so a resume renders the same conversation.
    events = agent.store.events(agent.session_id)
    user = next(e for e in events if e.kind == "user")
    assert user.content == "what should I fix?" and user.data == {"context": "the build is red on main"}
    conv = conversation_of(events)
    assert conv.messages[0].content == "the build is red on main\n\nwhat should I fix?"


def test_user_prompt_submit_exit_2_refuses_the_prompt(make_agent, workspace: Path) -> None:
    code = "import sys; sys.stderr.write('no secrets in prompts'); sys.exit(2)"
    agent, engine = make_agent(["OK.<|end|>"], hooks=hooks(workspace, "UserPromptSubmit", code))
    events = agent.send_sync("my password is hunter2")
    error = next(e for e in events if isinstance(e, ErrorEvent))
    assert "refused the prompt: no secrets in prompts" in error.message
    assert not any(isinstance(e, TurnEnd) for e in events) and engine.prefill_log == []
    assert agent.turn == 0


def test_session_start_context_reaches_the_first_message(make_agent, workspace: Path) -> None:
    agent, engine = make_agent(
        ["OK.<|end|>"], hooks=hooks(workspace, "SessionStart", "print('branch: main')")
    )
    agent.send_sync("hi")
    assert "<|user|>branch: main\n\nhi<|end|>" in engine.text


def test_a_hook_past_its_timeout_is_killed_and_warned(make_agent, workspace: Path, tmp_path: Path) -> None:
    # It starts a child in its group too: the whole group goes.
    pid_file = tmp_path / "child.pid"
    child = "[sys.executable, '-c', 'import time; time.sleep(30)']"
    code = (
        f"import pathlib, subprocess, sys, time; p = subprocess.Popen({child}); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid)); time.sleep(30)"
    )
    h = hooks(workspace, "PreToolUse", code, timeout=0.5)
    agent, _ = make_agent(write_b(), mode="auto", hooks=h)
    t0 = time.monotonic()
    events = agent.send_sync("write b")
    assert time.monotonic() - t0 < 15
    notice = next(e for e in events if isinstance(e, HookNotice))
    assert notice.exit_code is None and not notice.blocked and "was killed after 0.5 s" in notice.message
    assert (workspace / "b.txt").read_text() == "x"  # a warning: the call went on
    status = Path(f"/proc/{pid_file.read_text()}/status")
    deadline = time.monotonic() + 5
    while status.exists() and "zombie" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not status.exists() or "zombie" in status.read_text()  # the child went with the group


def test_other_exit_codes_warn_and_go_on(make_agent, workspace: Path) -> None:
    code = "import sys; sys.stderr.write('linter crashed'); sys.exit(1)"
    agent, _ = make_agent(write_b(), mode="auto", hooks=hooks(workspace, "PreToolUse", code))
    events = agent.send_sync("write b")
    notice = next(e for e in events if isinstance(e, HookNotice))
    assert "exited with 1: linter crashed" in notice.message and not notice.blocked
    assert (workspace / "b.txt").read_text() == "x"


def test_a_matcher_that_does_not_fit_skips_the_hook(make_agent, workspace: Path) -> None:
    code = "import sys; sys.exit(2)"
    h = hooks(workspace, "PreToolUse", code, matcher="write")  # a full match: not write_file
    agent, _ = make_agent(write_b(), mode="auto", hooks=h)
    events = agent.send_sync("write b")
    assert not any(isinstance(e, HookNotice) for e in events)
    assert (workspace / "b.txt").read_text() == "x"


def test_hook_runs_are_recorded_in_the_session_events(make_agent, workspace: Path) -> None:
    h = Hooks(
        workspace,
        [
            Hook("PreToolUse", py("pass")),
            Hook("PostToolUse", py("import sys; sys.exit(3)")),
            Hook("Stop", py("pass")),
        ],
    )
    agent, _ = make_agent(write_b(), mode="auto", hooks=h)
    agent.send_sync("write b")
    events = agent.store.events(agent.session_id)
    runs = [e.data["hook"] for e in events if e.kind == "system" and e.data and "hook" in e.data]
    assert [(r["event"], r["exit_code"], r["blocked"]) for r in runs] == [
        ("PreToolUse", 0, False),
        ("PostToolUse", 3, False),
        ("Stop", 0, False),
    ]
    assert all(r["duration_s"] >= 0 and r["command"] for r in runs)
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result")
    # They are not part of the conversation: a resume renders the same messages.
    conv = conversation_of(events)
    assert conv.system == agent.system_prompt
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "assistant"]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def project_hook(workspace: Path, marker: Path) -> None:
    folder = workspace / ".hybrid-agent"
    folder.mkdir(exist_ok=True)
    command = py(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')")
    (folder / "settings.toml").write_text(
        f'[[hooks.PreToolUse]]\nmatcher = "write_file"\ncommand = {json.dumps(command)}\ntimeout = 5\n'
    )


def test_hooks_from_an_untrusted_project_file_do_not_run(
    make_agent, workspace: Path, tmp_path: Path, config: Path
) -> None:
    marker = tmp_path / "ran"
    project_hook(workspace, marker)
    settings = load_settings(workspace)
    assert any("ignored hooks" in w for w in settings.warnings)
    agent, _ = make_agent(write_b(), mode="auto", hooks=Hooks.from_settings(settings, workspace))
    agent.send_sync("write b")
    assert (workspace / "b.txt").exists() and not marker.exists()
    trust(workspace)  # once trusted, they run
    trusted = Hooks.from_settings(load_settings(workspace), workspace)
    assert [(h.event, h.timeout, h.origin) for h in trusted.hooks["PreToolUse"]] == [
        ("PreToolUse", 5.0, "project")
    ]
    agent, _ = make_agent(write_b(), mode="auto", hooks=trusted)
    agent.send_sync("write b")
    assert marker.read_text() == "ran"


def test_an_invalid_matcher_is_a_settings_error(workspace: Path, config: Path) -> None:
    from hybrid_agent.agent.settings import SettingsError

    config.mkdir()
    (config / "settings.toml").write_text('[[hooks.PreToolUse]]\nmatcher = "write_file("\ncommand = "true"\n')
    with pytest.raises(SettingsError, match=r"hooks\.PreToolUse\[0\]\.matcher.*not a regular expression"):
        load_settings(workspace)


def test_the_settings_hooks_reach_the_agent_through_the_cli_options(
    workspace: Path, tmp_path: Path, config: Path
) -> None:
    """`run` and the UI open the agent with `_agent_options`: its `hooks` come from the merged
    settings, an untrusted folder's left out."""
    from hybrid_agent.agent.cli import parse_args
    from hybrid_agent.agent.commands import _agent_options

    project_hook(workspace, tmp_path / "ran")
    config.mkdir()
    (config / "settings.toml").write_text(f"[[hooks.Stop]]\ncommand = {json.dumps(py('pass'))}\n")
    options = _agent_options(parse_args(["run", "--workspace", str(workspace), "hi"]))
    assert [(h.event, h.origin) for hs in options["hooks"].hooks.values() for h in hs] == [("Stop", "user")]
    trust(workspace)
    options = _agent_options(parse_args(["run", "--workspace", str(workspace), "hi"]))
    found = [(h.event, h.origin) for hs in options["hooks"].hooks.values() for h in hs]
    assert found == [("PreToolUse", "project"), ("Stop", "user")]


def test_session_start_runs_for_a_new_and_a_resumed_session(
    make_agent, workspace: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "start.jsonl"
    code = f"import sys; open({str(seen)!r}, 'a').write(sys.stdin.read() + chr(10))"
    agent, _ = make_agent(["OK.<|end|>"], hooks=hooks(workspace, "SessionStart", code))
    agent.send_sync("hi")
    first = agent.session_id
    agent.new_session()
    agent.resume(first)
    runs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [(r["source"], r["session_id"] == first) for r in runs] == [
        ("startup", True),
        ("startup", False),
        ("resume", True),
    ]


def hook_runs(agent: Any) -> list[tuple[int | None, str, int | None]]:
    events = agent.store.events(agent.session_id)
    return [
        (e.turn, e.data["hook"]["event"], e.data["hook"]["exit_code"])
        for e in events
        if "hook" in (e.data or {})
    ]


def test_a_cancelled_turn_keeps_the_records_of_the_hooks_that_ran(make_agent, workspace: Path) -> None:
    """The hooks that ran before a cancel ran for real (they may have changed things): their runs reach
    the session's events, after the last saved turn's, while the conversation stays as it was."""
    h = Hooks(
        workspace,
        [
            Hook("UserPromptSubmit", py("pass")),
            Hook("PreToolUse", py("pass")),
            Hook("PostToolUse", py("pass")),
        ],
    )
    agent, engine = make_agent(["First.<|end|>", *write_b(), "never read"], mode="auto", hooks=h)
    agent.send_sync("one")
    assert hook_runs(agent) == [(1, "UserPromptSubmit", 0)]
    # Cancelled in the round after the tool call (its Pre/PostToolUse hooks ran).
    engine.step_hook = lambda n: agent.cancel() if (workspace / "b.txt").exists() else None
    events = agent.send_sync("write b")
    assert events[-1].stop_reason == "cancelled" and agent.turn == 1
    assert hook_runs(agent) == [
        (1, "UserPromptSubmit", 0),
        (1, "UserPromptSubmit", 0),
        (1, "PreToolUse", 0),
        (1, "PostToolUse", 0),
    ]
    conv = conversation_of(agent.store.events(agent.session_id))
    assert [m.role for m in conv.messages] == ["user", "assistant"]  # the cancelled turn is not in it
    # The next turn is saved as turn 2, after the records.
    engine.step_hook = None
    engine.replies = ["Done.<|end|>"]
    agent.send_sync("again")
    assert agent.turn == 2 and hook_runs(agent)[-1] == (2, "UserPromptSubmit", 0)


def test_records_of_a_cancelled_first_turn_go_with_the_first_saved_turn(make_agent, workspace: Path) -> None:
    """Before the session has a saved turn (and a database row) the records wait for its first turn;
    a refused prompt keeps its records too."""
    h = Hooks(workspace, [Hook("UserPromptSubmit", py("import sys; sys.exit(3)"))])
    agent, engine = make_agent(["a long answer that is cut", "Fine.<|end|>"], hooks=h)
    engine.step_hook = lambda n: agent.cancel() if engine.text.endswith("long") else None
    assert agent.send_sync("one")[-1].stop_reason == "cancelled"
    assert agent.store.list_sessions() == []  # no row for a session without a saved turn
    engine.step_hook = None
    agent.send_sync("two")
    assert hook_runs(agent) == [(1, "UserPromptSubmit", 3), (1, "UserPromptSubmit", 3)]
    kinds = [e.kind for e in agent.store.events(agent.session_id)]
    assert kinds[0] == "system" and kinds.count("user") == 1
    # A prompt a hook refuses is not read, but the refusing run is recorded.
    agent.hooks = Hooks(workspace, [Hook("UserPromptSubmit", py("import sys; sys.exit(2)"))])
    events = agent.send_sync("three")
    assert isinstance(events[-1], ErrorEvent) and agent.turn == 1
    assert hook_runs(agent)[-1] == (1, "UserPromptSubmit", 2)
