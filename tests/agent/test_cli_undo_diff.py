"""`sessions diff`, `undo` and `rewind` from the command line (agent/undo_commands.py), on sessions
made by the agent with the scripted engine (tests/agent/conftest.py) over the real Store, workspace and
tools. Diffs are checked against `git apply`: applied to the files before, they give the files after."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.cli import main

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def call_tool(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--db", str(db)])
    out, err = capsys.readouterr()
    return code, out, err


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def two_turns(make_agent: Any, workspace: Path) -> tuple[Any, list[dict[str, bytes]]]:
    """A session whose turn 1 changes a.txt and makes b.txt, and turn 2 changes both again; the files
    before, after turn 1 and after turn 2."""
    (workspace / "a.txt").write_text("zero\nshared\n")
    agent, engine = make_agent(mode="auto")
    states = [files(workspace)]
    for a, b in (("one\nshared\n", "bee\n"), ("two\nshared\n", "bee\nsecond line\n")):
        engine.replies = [call_tool("write_file", path="a.txt", content=a),
                          call_tool("write_file", path="b.txt", content=b), "ok<|end|>"]  # fmt: skip
        agent.send_sync("next")
        states.append(files(workspace))
    return agent, states


def apply(diff: str, start: dict[str, bytes], tmp: Path) -> dict[str, bytes]:
    """`git apply` of `diff` onto a folder holding `start`: the reference for what the diff says."""
    tmp.mkdir()
    for name, data in start.items():
        (tmp / name).write_bytes(data)
    subprocess.run([GIT or "git", "apply", "-"], cwd=tmp, input=diff.encode(), check=True)
    return files(tmp)


@needs_git
def test_diff_whole_session_and_one_turn_apply_with_git(
    make_agent: Any, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sessions.db"
    agent, states = two_turns(make_agent, workspace)
    assert states[0] != states[1] != states[2]
    code, out, _ = cli(capsys, db, "sessions", "diff", agent.session_id[:8])
    assert code == 0 and "new file mode" in out
    assert apply(out, states[0], tmp_path / "all") == states[2]
    code, out, _ = cli(capsys, db, "sessions", "diff", agent.session_id, "--turn", "2")
    assert code == 0 and apply(out, states[1], tmp_path / "t2") == states[2]
    code, out, err = cli(capsys, db, "sessions", "diff", agent.session_id, "--turn", "7")
    assert code == 1 and out == "" and "has turns 1 to 2" in err and len(err.splitlines()) == 1


def test_undo_reverts_the_last_turn_and_refuses_outside_edits_unless_forced(
    make_agent: Any, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sessions.db"
    agent, states = two_turns(make_agent, workspace)
    sid = agent.session_id
    (workspace / "b.txt").write_text("edited by hand\n")
    code, out, err = cli(capsys, db, "undo", sid)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "b.txt was changed outside the agent" in err and "--force" in err
    assert (workspace / "b.txt").read_text() == "edited by hand\n"  # nothing was changed
    assert (workspace / "a.txt").read_bytes() == states[2]["a.txt"]
    code, out, err = cli(capsys, db, "undo", sid, "--force")
    assert code == 0 and "of turn 2" in out, err
    assert files(workspace) == states[1]
    code, out, _ = cli(capsys, db, "undo", sid)
    assert code == 0 and "of turn 1" in out and files(workspace) == states[0]
    code, out, err = cli(capsys, db, "undo", sid)
    assert code == 1 and "nothing to undo" in err
    code, out, err = cli(capsys, db, "sessions", "diff", sid)
    assert code == 0 and out == "" and "no file changes" in err


def test_rewind_in_place_reverts_files_and_state_then_the_session_goes_on(
    make_agent: Any, store: Any, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sessions.db"
    agent, states = two_turns(make_agent, workspace)
    sid = agent.session_id
    code, out, err = cli(capsys, db, "rewind", sid, "--turn", "5")
    assert code == 1 and "has turns 0 to 2" in err
    fork = store.fork_session(sid, 2).id  # shares turn 2's bytes, which the rewind drops from sid
    code, out, err = cli(capsys, db, "rewind", sid, "--turn", "1")
    assert code == 0, err
    assert "turns 2 to 2 are gone" in out and files(workspace) == states[1]
    info = json.loads(cli(capsys, db, "sessions", "show", sid, "--json")[1])
    assert (info["id"], info["turns"]) == (sid, 1)  # in place: the same session
    assert [e.turn for e in store.events(sid)][-1] == 1 and {c.turn for c in store.file_changes(sid)} == {1}
    assert cli(capsys, db, "sessions", "check")[0] == 0
    assert store.load_snapshot(fork, 2).turn == 2 and len(store.file_changes(fork)) == 4
    # The session goes on from turn 1's state, as if turn 2 had never run.
    resumed, engine = make_agent(["again<|end|>"], session_id=sid)
    assert resumed.turn == 1
    before = engine.text
    end = resumed.send_sync("instead")[-1]
    assert end.turn == 2 and engine.text.startswith(before)
    assert "second" not in engine.text


def test_rewind_files_only_and_state_only(
    make_agent: Any, store: Any, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sessions.db"
    agent, states = two_turns(make_agent, workspace)
    sid = agent.session_id
    code, out, err = cli(capsys, db, "rewind", sid, "--turn", "1", "--files-only")
    assert code == 0 and files(workspace) == states[1], err
    assert store.get_session(sid).latest_turn == 2  # the state stays
    code, out, err = cli(capsys, db, "rewind", sid, "--turn", "0", "--state-only")
    assert code == 0 and "keep their later changes" in out
    assert files(workspace) == states[1]  # the files stay
    assert store.get_session(sid).latest_turn is None and store.events(sid) == []
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, db, "rewind", sid, "--turn", "1", "--files-only", "--state-only")
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


@needs_git
def test_a_session_records_the_git_head_it_started_on(
    make_agent: Any, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    git = [GIT or "git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=workspace, check=True)
    subprocess.run([*git, "add", "."], cwd=workspace, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=workspace, check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout
    agent, _ = make_agent(["hi<|end|>"])
    agent.send_sync("hello")
    shown = cli(capsys, tmp_path / "sessions.db", "sessions", "show", agent.session_id, "--json")[1]
    info = json.loads(shown)
    assert info["git_head"] == head.strip()
    assert (
        f"started at git commit {head.strip()}"
        in cli(capsys, tmp_path / "sessions.db", "sessions", "show", agent.session_id)[1]
    )
    subprocess.run([*git, "pack-refs", "--all"], cwd=workspace, check=True)  # the ref in packed-refs
    other, _ = make_agent(["hi<|end|>"])
    other.send_sync("hello")
    assert other.store.get_session(other.session_id).meta["git_head"] == head.strip()
