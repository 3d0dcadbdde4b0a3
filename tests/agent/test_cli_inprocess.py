"""The command line through `hybrid_agent.cli.main(argv)` in this process: the same commands and error
paths as tests/agent/test_cli_commands.py (which runs them as subprocesses, under -m slow), fast enough
for the default run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main


def tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        path
    )
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ws").mkdir()
    return {
        "model": str(tiny(tmp_path / "model", 1)),
        "other": str(tiny(tmp_path / "other", 2)),
        "db": str(tmp_path / "sessions.db"),
        "ws": str(tmp_path / "ws"),
        "tmp": str(tmp_path),
    }


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_and_sessions(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "5"]
    code, out, err = call(capsys, "run", "hello there", *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    code, out, err = call(capsys, "run", "and again", "--json", "--resume", sid[:8], *common)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]  # --json is --output-format stream-json
    assert (events[0]["type"], events[0]["subtype"], events[0]["session_id"]) == ("system", "init", sid)
    assert events[-1]["type"] == "result" and events[-1]["turn"] == 2 and events[-1]["session_id"] == sid

    code, out, _ = call(capsys, "sessions", "list", "--db", env["db"])
    assert code == 0 and sid in out and "hello there" in out
    code, out, _ = call(capsys, "sessions", "list", "--json", "--db", env["db"])
    assert [json.loads(line)["turns"] for line in out.splitlines()] == [2]
    assert call(capsys, "sessions", "--json", "--db", env["db"])[:2] == (0, out)  # no action: list
    code, out, _ = call(capsys, "sessions", "--db", env["db"])
    assert code == 0 and sid in out and "hello there" in out
    code, out, _ = call(capsys, "sessions", "show", sid, "--db", env["db"])
    assert "[1] user: hello there" in out and "[2] user: and again" in out
    code, out, _ = call(capsys, "sessions", "export", sid, "--db", env["db"])
    assert [json.loads(line)["kind"] for line in out.splitlines()] == [
        "system", "user", "assistant", "user", "assistant"]  # fmt: skip
    code, out, _ = call(capsys, "sessions", "fork", sid, "--turn", "1", "--db", env["db"])
    fork = out.strip()
    code, out, _ = call(capsys, "sessions", "show", fork, "--json", "--db", env["db"])
    info = json.loads(out)
    assert (info["parent_id"], info["fork_turn"], info["turns"]) == (sid, 1, 1)
    code, out, _ = call(capsys, "sessions", "rm", fork, "--db", env["db"])
    assert code == 0 and fork in out
    code, out, _ = call(capsys, "sessions", "list", "--json", "--db", env["db"])
    assert fork not in out


def test_errors(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", env["tmp"])
    monkeypatch.setenv("HYBRID_AGENT_DEFAULT_MODEL", env["tmp"] + "/no-default-model-here")
    argv = ["run", "hi", "--model", env["model"], "--db", env["db"], "--max-new-tokens", "2"]
    code, out, _ = call(capsys, *argv, "--workspace", env["ws"])
    sid = out.splitlines()[-1].removeprefix("session: ")
    not_db = Path(env["tmp"]) / "notes.txt"
    not_db.write_text("this is not a database\n" * 100)
    cases = [
        (["run", "hi", "--db", env["db"]], "pass --model PATH"),
        (["--db", env["db"]], "pass --model PATH"),  # the TUI checks before it starts
        (["run", "hi", "--model", env["tmp"] + "/missing", "--db", env["db"]], "no model at"),
        (["run", "hi", "--model", env["model"], "--db", env["db"], "--resume", "zzz"], "no session 'zzz'"),
        (["run", "hi", "--model", env["other"], "--db", env["db"], "--resume", sid], "another model"),
        (["sessions", "show", "nope", "--db", env["db"]], "no session 'nope'"),
        (["sessions", "fork", sid, "--turn", "7", "--db", env["db"]], "turn 7"),
        (["sessions", "list", "--db", str(not_db)], ""),
        (["run", "hi", "--model", env["model"], "--db", env["db"], "--workspace", env["tmp"] + "/nowhere"],
         "nowhere"),
        # Refused before the weights load, on any machine: no such device type / no 99th GPU.
        (["run", "hi", "--model", env["model"], "--db", env["db"], "--device", "gpu0"], "--device gpu0"),
        (["run", "hi", "--model", env["model"], "--db", env["db"], "--device", "cuda:99"], "--device cpu"),
        (["--model", env["model"], "--db", env["db"], "--device", "gpu0"], "--device gpu0"),  # the TUI too
    ]  # fmt: skip
    for argv, needle in cases:
        with monkeypatch.context() as m:
            if argv[0] not in ("run", "sessions"):  # the UI's own checks, as on a terminal
                m.setattr(sys.stdin, "isatty", lambda: True)
                m.setattr(sys.stdout, "isatty", lambda: True)
            code, out, err = call(capsys, *argv)
        assert code == 1, (argv, out, err)
        assert err.startswith("hybrid-agent: error: ") and needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(Exception, match="no session 'nope'"):
        main(["--debug", "sessions", "show", "nope", "--db", env["db"]])
    with pytest.raises(SystemExit) as usage:
        main(["run"])
    assert usage.value.code == 2
    bad_numbers = [
        ("--temperature", "-1", "number >= 0"),
        ("--max-new-tokens", "0", ">= 1"),
        ("--window", "0", ">= 1"),
        ("--sinks", "-2", ">= 0"),
        ("--window", "4k", "whole number"),
    ]
    for option, value, needle in bad_numbers:  # argparse's one-line usage error, not a traceback
        with pytest.raises(SystemExit) as usage:
            main(["run", "hi", option, value])
        assert usage.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: " in err and needle in err, err


def test_the_entry_opens_the_ui_with_checked_options(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hybrid_agent/cli.py opens the UI itself (tui/ sits above agent/), with the options that
    agent/commands.py checked: a --resume prefix becomes the session's id. agent/cli.py's `main` runs
    the commands only."""
    common = ["--model", env["model"], "--db", env["db"]]
    code, out, err = call(capsys, "run", "hi", *common, "--workspace", env["ws"], "--max-new-tokens", "2")
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    import hybrid_agent.tui.app as app

    opened: list[dict[str, object]] = []
    monkeypatch.setattr(app, "run_app", lambda options, **kw: opened.append(options) or 0)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert call(capsys, *common, "--resume", sid[:8])[0] == 0
    assert [(o["resume"], o["model"], o["db"]) for o in opened] == [(sid, env["model"], env["db"])]

    from hybrid_agent.agent import cli as agent_cli

    assert agent_cli.main(common) == 2
    assert capsys.readouterr().err.strip() == agent_cli.NO_COMMAND and not opened[1:]


@pytest.mark.parametrize(
    ("typed", "allow", "always"), [("y\n", True, False), ("a\n", True, True), ("\n", False, False)]
)
def test_terminal_approval(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], typed: str,
                           allow: bool, always: bool) -> None:  # fmt: skip
    import io

    from hybrid_agent.agent.commands import ask_on_terminal
    from hybrid_agent.agent.events import ToolCallRequested

    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    req = ToolCallRequested(
        call_id="c", tool="write_file", arguments={"path": "a"}, diff="+x\n", needs_approval=True
    )
    decision = ask_on_terminal(req)
    assert (decision.allow, decision.always) == (allow, always)
    err = capsys.readouterr().err
    assert "[approve write_file" in err and "+x" in err and "allow?" in err


def test_resume_keeps_the_sessions_window(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "3"]
    code, out, err = call(capsys, "run", "hi", "--json", "--window", "16", "--sinks", "2", *common)
    assert code == 0, err
    first = json.loads(out.splitlines()[-1])
    code, out, err = call(capsys, "run", "again", "--json", "--resume", first["session_id"], *common)
    assert code == 0, err
    second = json.loads(out.splitlines()[-1])
    assert first["window"] == second["window"] == 16 and second["turn"] == 2
    # Constant up to the eviction slack (a few tokens past the window may linger until a compaction).
    assert abs(second["state_bytes"] - first["state_bytes"]) <= 0.05 * first["state_bytes"]


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_main_sets_passive_omp_wait_before_torch(preset: str | None) -> None:
    """`hybrid-agent` asks OpenMP not to spin (decode stalls under load otherwise), before torch is
    imported (libgomp reads it when it loads), and leaves a user's own OMP_WAIT_POLICY alone."""
    code = (
        "import os, sys\n"
        "import hybrid_agent.agent.commands as c\n"
        "from hybrid_agent.agent import cli\n"
        "c.dispatch = lambda args: print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules) or 0\n"
        "cli.main(['sessions', 'list'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [preset or "PASSIVE", "False"]


def test_run_reads_dash_parts_from_stdin(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `cat error.log | hybrid-agent run "why does this fail?" -`
    log = "Traceback (most recent call last):\n  File 'a.py', line 1\nNameError: x\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(log))
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "3"]
    code, out, err = call(capsys, "run", "why does this fail?", "-", *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    code, out, _ = call(capsys, "sessions", "export", sid, "--db", env["db"])
    (user,) = [json.loads(line)["content"] for line in out.splitlines() if json.loads(line)["kind"] == "user"]
    assert user == "why does this fail?\n\n" + log.rstrip("\n")
    # An empty message is refused before the model loads (stdin empty, or blank arguments).
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for argv in (["run", "-"], ["run", "  ", "\n"]):
        code, _, err = call(capsys, *argv, *common)
        assert code == 1 and err.startswith("hybrid-agent: error: the message is empty"), err


def test_resuming_a_session_whose_folder_moved_says_what_to_do(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    common = ["--model", env["model"], "--db", env["db"], "--max-new-tokens", "2"]
    code, out, err = call(capsys, "run", "hi", "--workspace", env["ws"], *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    moved = tmp_path / "moved"
    Path(env["ws"]).rename(moved)
    code, _, err = call(capsys, "run", "again", "--resume", sid, *common)
    assert code == 1 and f"works on {env['ws']}, which is not a folder any more" in err, err
    assert "--workspace DIR" in err and len(err.strip().splitlines()) == 1
    code, out, err = call(capsys, "run", "again", "--resume", sid, "--workspace", str(moved), *common)
    assert code == 0 and out.splitlines()[-1] == f"session: {sid}", err
    # ... and the session now lives there: the next resume needs no --workspace.
    code, out, err = call(capsys, "run", "and on", "--resume", sid, *common)
    assert code == 0 and out.splitlines()[-1] == f"session: {sid}", err
    code, out, _ = call(capsys, "sessions", "show", sid, "--json", "--db", env["db"])
    assert json.loads(out)["workspace"] == str(moved)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--temperature", "1e400"),
        ("--temperature", "1000"),
        ("--max-new-tokens", "1e3"),
        ("--max-prompt-tokens", "0"),
        ("--window", str(2**40)),
        ("--seed", "-1"),
        ("--seed", str(2**64)),
    ],
)
def test_numeric_options_refuse_nan_inf_and_out_of_range(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as usage:  # argparse's one-line usage error, before anything loads
        main(["run", "hi", option, value])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and "is not a" in err, err
    with pytest.raises(SystemExit) as usage:  # `sessions fork --turn` too
        main(["sessions", "fork", "x", "--turn", "-1"])
    assert (
        usage.value.code == 2 and "argument --turn: -1 is not a whole number >= 0" in capsys.readouterr().err
    )


def test_agent_open_refuses_nan_before_anything_is_made(env: dict[str, str]) -> None:
    from hybrid_agent.agent.errors import AgentError
    from hybrid_agent.agent.loop import Agent

    with pytest.raises(AgentError, match="temperature must be a finite number >= 0, not nan"):
        Agent.open(model=env["model"], db=env["db"], workspace=env["ws"], temperature=float("nan"))
    assert not Path(env["db"]).exists()


def test_invalid_utf8_on_stdin_names_the_offset_and_makes_no_session(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("héllo ".encode() + b"\xff\xfe rest")))
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, out, err = call(capsys, "run", "why?", "-", *common)
    assert code == 1 and out == "", (out, err)
    assert err.startswith("hybrid-agent: error: stdin is not UTF-8 text: byte 0xff at offset 7"), err
    assert len(err.strip().splitlines()) == 1, err
    assert not Path(env["db"]).exists()  # nothing written: no session


def test_max_prompt_tokens_refuses_a_long_message_in_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, out, err = call(capsys, "run", "x" * 500, "--max-prompt-tokens", "100", *common)
    assert code == 1, (out, err)
    assert err.startswith("hybrid-agent: error: the message with the system prompt is "), err
    assert "tokens, over the limit of 100 (--max-prompt-tokens)" in err, err
    assert len(err.strip().splitlines()) == 1, err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_long_message_shows_prefill_progress_on_stderr(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid_agent.agent.engine import PREFILL_CHUNK

    stderr = _Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, out, _ = call(capsys, "run", "y" * (2 * PREFILL_CHUNK), *common)
    assert code == 0, stderr.getvalue()
    assert "reading the message" in stderr.getvalue() and "tok" in stderr.getvalue()
    code, out, _ = call(capsys, "run", "y" * (2 * PREFILL_CHUNK), "--json", *common)
    shown = [json.loads(line) for line in out.splitlines()]
    progress = [e["data"] for e in shown if e["type"] == "system" and e["subtype"] == "prefill_progress"]
    # Every chunk boundary after the system prompt, whose state the first run kept (prefix_cache.py).
    tokens = [p["tokens"] for p in progress]
    assert tokens[:-1] == list(range(tokens[0], tokens[-1], PREFILL_CHUNK)) and tokens[0] % PREFILL_CHUNK == 0
    assert 2 * PREFILL_CHUNK in tokens and progress[-1]["tokens"] == progress[-1]["total"] > 2 * PREFILL_CHUNK


def test_human_output_escapes_terminal_controls(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from hybrid_agent.agent.commands import _PlainEvents
    from hybrid_agent.agent.events import ToolCallRequested, ToolResultEvent

    evil = "hi \x1b]2;owned\x07 \x1b[2J\x9b31m\rend"
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, out, err = call(capsys, "run", evil, *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    for argv in (["sessions", "list"], ["sessions", "show", sid]):
        code, out, _ = call(capsys, *argv, "--db", env["db"])
        assert code == 0 and "hi \\x1b]2;owned\\x07 \\x1b[2J\\x9b31m" in out, out
        assert not any(c in out for c in "\x1b\x07\x9b\r"), out
    assert "[1] user: hi \\x1b]2;owned\\x07 \\x1b[2J\\x9b31m\\x0dend" in out  # `show`: the message
    code, out, _ = call(capsys, "sessions", "show", sid, "--json", "--db", env["db"])
    assert json.loads(out)["title"] == " ".join(evil.split())  # --json stays exact
    show = _PlainEvents(agent=None)
    show(ToolCallRequested(call_id="c", tool="read_file", arguments={"path": "\x1b[31m"}))
    show(ToolResultEvent(call_id="c", tool="read_file", text="\x1b]0;title\x07 body"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;title\\x07 body" in err, err


def test_json_joins_text_deltas_and_keeps_the_answer_exact(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from hybrid_agent.agent import headless

    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "80"]
    for interval in (0.05, 1e9):  # 20 events a second, and an interval that no turn outlasts
        monkeypatch.setattr(headless, "TEXT_INTERVAL_S", interval)
        t0 = time.monotonic()
        code, out, err = call(capsys, "run", "go", "--json", "--include-partial-messages", *common)
        took = time.monotonic() - t0
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        texts = [e["event"]["delta"]["text"] for e in events if e["type"] == "stream_event"]
        end = events[-1]
        assert end["type"] == "result" and end["usage"]["output_tokens"] > 50
        # At most one text event per interval (the first one at once, the rest at the end).
        assert len(texts) <= 2 + took / interval, (len(texts), took)
        code, out, _ = call(capsys, "sessions", "export", end["session_id"], "--db", env["db"])
        stored = [json.loads(line) for line in out.splitlines()]
        (answer,) = [e["content"] for e in stored if e["kind"] == "assistant"]
        (message,) = [e["message"] for e in events if e["type"] == "assistant"]
        assert "".join(texts) == answer == message["content"][0]["text"] == end["result"]


def test_broken_plugin_is_reported_on_stderr(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    info = site / "broken_tools_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "brokenplug_cli.py").write_text("raise ImportError('needs libfoo; pip install foo')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tools-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hybrid_agent.tools]\nbroken = brokenplug_cli:TOOLS\n")
    monkeypatch.syspath_prepend(str(site))
    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, _, err = call(capsys, "run", "hi", *common)
    sys.modules.pop("brokenplug_cli", None)
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if x.startswith("hybrid-agent: warning: ")]
    assert "plugin 'broken'" in line and "needs libfoo; pip install foo" in line


def test_python_open_and_send_sync(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_agent.agent.loop import Agent

    common = ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "2"]
    code, out, err = call(capsys, "run", "hi", *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    # Resuming by a prefix of the id works from Python as on the command line.
    agent = Agent.open(model=env["model"], db=env["db"], resume=sid[:8], max_new_tokens=2)
    try:
        assert agent.session_id == sid and agent.turn == 1
        agent.send_sync("again")  # the turn runs even though the caller never looks at the events
        assert agent.turn == 2
        assert agent.store.get_session(sid).latest_turn == 2
    finally:
        agent.close()
