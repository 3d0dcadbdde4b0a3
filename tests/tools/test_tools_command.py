"""run_command: off by default, approval, timeout, output cap, and journaled (undoable) changes."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hybrid_agent.tools import Limits, ToolRegistry


@pytest.fixture
def shell(sandbox) -> ToolRegistry:
    return ToolRegistry(sandbox.ws, load_plugins=False, enable_commands=True)


def test_runs_in_workspace_and_reports_exit_code(shell, sandbox):
    res = shell.call("run_command", {"command": "pwd; echo err >&2; exit 3"})
    assert res.text == f"$ pwd; echo err >&2; exit 3\n{os.path.realpath(sandbox.ws)}\nerr\n[exit code 3]"
    assert res.is_error and res.data["exit_code"] == 3
    assert shell.policy("run_command") == "ask"
    assert shell.preview("run_command", {"command": "ls"}).command == "ls"


def test_not_run_without_approval(shell, sandbox):
    before = sandbox.state()
    res = shell.call("run_command", {"command": "touch made.txt"}, approve=False)
    assert res.denied and sandbox.state() == before


def test_timeout_kills_the_whole_process_group(shell, sandbox):
    t0 = time.monotonic()
    res = shell.call("run_command", {"command": "(sleep 2; touch late.txt) & sleep 30", "timeout_s": 1})
    took = time.monotonic() - t0
    assert res.is_error and "[timed out after 1 s; killed]" in res.text
    assert took < 6, took
    time.sleep(2.5)
    assert not (sandbox.ws / "late.txt").exists()  # the background child died with the group


def test_cancellation(shell):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    res = shell.call("run_command", {"command": "sleep 30"}, cancel=cancel)
    assert "[cancelled; killed]" in res.text and time.monotonic() - t0 < 6


def test_output_is_capped_head_and_tail(sandbox):
    reg = ToolRegistry(
        sandbox.ws, load_plugins=False, enable_commands=True, limits=Limits(command_output_max_chars=1000)
    )
    res = reg.call(
        "run_command", {"command": "echo START; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END"}
    )
    assert not res.is_error
    assert "START" in res.text and res.text.rstrip().endswith("END\n[exit code 0]".rstrip())
    assert "bytes of output not shown" in res.text and len(res.text) < 1300


def test_changes_are_journaled_and_undoable(shell, sandbox):
    (sandbox.ws / ".gitignore").write_text("build/\n")
    before = sandbox.state()
    res = shell.call(
        "run_command",
        {
            "command": "echo new > new.txt && echo more >> hello.txt && rm src/main.py && "
            "mkdir -p build && echo out > build/out.o && touch .gitignore"
        },
        turn=5,
    )
    assert not res.is_error, res.text
    assert res.data["changed"] == ["hello.txt", "new.txt", "src/main.py"]
    assert "[changed files (undoable): hello.txt, new.txt, src/main.py]" in res.text
    entries = {e.path: e for e in shell.journal.entries()}
    assert entries["hello.txt"].before == b"hello\n" and entries["hello.txt"].after == b"hello\nmore\n"
    assert entries["new.txt"].before is None and entries["src/main.py"].after is None
    assert {e.turn for e in entries.values()} == {5}
    shell.undo_after_turn(4)
    after = sandbox.state()
    # Everything tracked is back; the ignored build output (not journaled, by design) stays.
    assert {k: v for k, v in after.items() if "build" not in k and k != "ws/.gitignore"} == {
        k: v for k, v in before.items() if k != "ws/.gitignore"
    }
    assert after["ws/.gitignore"][2] == before["ws/.gitignore"][2]  # touched only: same bytes


def test_command_undo_refused_after_outside_edit(shell, sandbox):
    shell.call("run_command", {"command": "echo agent > out.txt"}, turn=1)
    (sandbox.ws / "out.txt").write_text("mine\n")
    with pytest.raises(Exception, match="changed outside the agent"):
        shell.undo_last()
    assert (sandbox.ws / "out.txt").read_text() == "mine\n"


def test_too_large_to_journal_is_reported(sandbox):
    reg = ToolRegistry(
        sandbox.ws, load_plugins=False, enable_commands=True, limits=Limits(journal_max_bytes=100)
    )
    (sandbox.ws / "big.bin").write_bytes(b"x" * 1000)
    res = reg.call("run_command", {"command": "echo y >> big.bin && echo small > s.txt"})
    assert res.data["not_undoable"] == ["big.bin"] and res.data["changed"] == ["s.txt"]
    assert "[changed files too large to undo: big.bin]" in res.text


def test_background_child_holding_the_output_is_stopped(shell):
    t0 = time.monotonic()
    res = shell.call("run_command", {"command": "echo a; sleep 30 & echo b"})
    assert time.monotonic() - t0 < 8
    assert res.text.startswith("$ echo a; sleep 30 & echo b\na\nb\n[exit code 0]")
    assert "[background processes still writing to the output were stopped]" in res.text
    assert res.data["background_stopped"] and not res.is_error
    # A daemon that redirects its output is left alone and does not delay the call.
    t0 = time.monotonic()
    res = shell.call("run_command", {"command": "sleep 1 > /dev/null 2>&1 & echo started"})
    assert time.monotonic() - t0 < 1 and not res.data["background_stopped"]


def test_timeout_also_when_the_command_closed_its_output(shell):
    t0 = time.monotonic()
    res = shell.call("run_command", {"command": "exec > /dev/null 2>&1; sleep 30", "timeout_s": 1})
    assert "[timed out after 1 s; killed]" in res.text and time.monotonic() - t0 < 6
