"""An agent process SIGKILLed mid-turn (tests/agent/crash_agent.py): its tool's file change can still be
undone after the next open, a change journaled ahead but never written is known as such, and a run
killed before anything was saved leaves no session behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hybrid_agent.agent.loop import Agent
from hybrid_agent.memory import Store

HELPER = Path(__file__).with_name("crash_agent.py")


@pytest.fixture(scope="module")
def zygote() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(HELPER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sessions.db"


@pytest.fixture
def crash(zygote: subprocess.Popen[str], db: Path, workspace: Path) -> Callable[[str], str]:
    """Run the agent until it kills itself at a point; returns the session id it printed."""

    def run(point: str) -> str:
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.write(f"{point} {db} {workspace}\n")
        zygote.stdin.flush()
        lines = []
        while not (line := zygote.stdout.readline()).startswith("exited") and line:
            lines.append(line)
        assert line, "the helper process died"
        status = int(line.split()[1])
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (status, lines)
        return next(ln.split()[1] for ln in lines if ln.startswith("session "))

    return run


def reopen(db: Path, workspace: Path, session_id: str, scripted_engine) -> Agent:
    return Agent(scripted_engine(), Store(db), workspace=workspace, session_id=session_id)


def test_a_write_killed_before_its_turn_was_saved_can_be_undone(
    crash, db, workspace, scripted_engine
) -> None:
    sid = crash("after-write")
    assert (workspace / "a.txt").read_text() == "changed\n"  # the tool wrote it, then the process died
    agent = reopen(db, workspace, sid, scripted_engine)
    try:
        assert agent.turn == 0  # the turn itself was never saved
        assert "a.txt" in agent.undo()
        assert (workspace / "a.txt").read_bytes() == b"hello from a\n"
    finally:
        agent.close()


def test_a_write_killed_before_the_file_changed_is_dropped_on_open(
    crash, db, workspace, scripted_engine
) -> None:
    sid = crash("before-write")
    assert (workspace / "a.txt").read_text() == "hello from a\n"  # never replaced
    agent = reopen(db, workspace, sid, scripted_engine)
    try:
        assert agent.turn == 1
        # The newest change undo sees is turn 1's b.txt, not the a.txt write that never happened
        # (undo would refuse that one: a.txt does not hold what it says was written).
        assert "b.txt" in agent.undo()
        assert not (workspace / "b.txt").exists()
        assert (workspace / "a.txt").read_text() == "hello from a\n"
    finally:
        agent.close()


def test_a_run_killed_before_its_first_turn_leaves_no_session(crash, db) -> None:
    crash("decoding")
    with Store(db) as store:
        assert store.list_sessions() == []
