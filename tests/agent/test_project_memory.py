"""Project memory (agent/project_memory.py): which AGENTS.md files count, the size cap, and a session
that keeps the text it started with, sees a change on resume and takes the new text on reload; on a
real store and workspace, with the scripted engine logging what the model reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hybrid_agent.agent.loop import Agent
from hybrid_agent.agent.project_memory import describe, load_project_memory, memory_folders
from hybrid_agent.memory import Store


def tree(tmp_path: Path, *, git: bool) -> Path:
    """An AGENTS.md in the repository's root (with a .git folder when `git`), none in repo/pkg, one in
    the workspace repo/pkg/app, and one above the repository, which never counts."""
    (tmp_path / "AGENTS.md").write_text("above the repository\n")
    ws = tmp_path / "repo" / "pkg" / "app"
    ws.mkdir(parents=True)
    if git:
        (tmp_path / "repo" / ".git").mkdir()
    (tmp_path / "repo" / "AGENTS.md").write_text("root rules\n")
    (ws / "AGENTS.md").write_text("app rules\n")
    return ws


def test_files_from_the_git_root_down_to_the_workspace(tmp_path: Path) -> None:
    ws = tree(tmp_path, git=True)
    assert memory_folders(ws) == [tmp_path / "repo", tmp_path / "repo" / "pkg", ws]
    memory = load_project_memory(ws)
    assert [f.path for f in memory.files] == [str(tmp_path / "repo" / "AGENTS.md"), str(ws / "AGENTS.md")]
    assert memory.files[1].sha256 == hashlib.sha256(b"app rules\n").hexdigest()
    text = memory.text()
    assert text.index("root rules") < text.index("app rules") and "above the repository" not in text
    assert memory.prompt("SYSTEM").startswith("SYSTEM\n\n# Project instructions (AGENTS.md)\n\n## ")
    assert load_project_memory(ws, max_bytes=0).files == ()


def test_outside_a_repository_only_the_workspaces_own(tmp_path: Path) -> None:
    ws = tree(tmp_path, git=False)
    assert [f.path for f in load_project_memory(ws).files] == [str(ws / "AGENTS.md")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_project_memory(empty).files == () and load_project_memory(empty).prompt("S") == "S"


def test_the_cap_cuts_with_a_note_and_the_digest_sees_past_it(tmp_path: Path) -> None:
    ws = tree(tmp_path, git=True)
    (tmp_path / "repo" / "AGENTS.md").write_text("r" * 30 + "\n")
    (ws / "AGENTS.md").write_text("a" * 100 + "TAIL\n")
    memory = load_project_memory(ws, max_bytes=50)
    root, app = memory.files
    assert (root.text, root.truncated) == ("r" * 30 + "\n", False)
    assert (app.text, app.truncated, app.size) == ("a" * 19, True, 105)
    assert "[cut here: the file is 105 bytes, project memory is read up to 50" in memory.text()
    (ws / "AGENTS.md").write_text("a" * 100 + "tail\n")  # a change the model would not even see
    assert load_project_memory(ws, max_bytes=50).digest != memory.digest


def test_a_session_keeps_its_memory_sees_a_change_and_reloads_it(tmp_path: Path, scripted_engine) -> None:
    ws = tree(tmp_path, git=True)
    db = f"sqlite:///{tmp_path / 's.db'}"
    engine = scripted_engine(["Noted.<|end|>"])
    agent = Agent(engine, Store(db), workspace=ws)
    assert agent.memory_status().loaded is None and not agent.memory_status().changed
    agent.send_sync("hello")
    assert "root rules" in engine.prefill_log[0] and "app rules" in engine.prefill_log[0]
    status = agent.memory_status()
    assert status.loaded == load_project_memory(ws).record() and not status.changed
    session = agent.session_id
    agent.close()
    memory_before = load_project_memory(ws)

    (ws / "AGENTS.md").write_text("app rules, version 2: see @notes.txt\n")
    (ws / "notes.txt").write_text("NOTES BODY\n")
    engine2 = scripted_engine(["Ok.<|end|>", "Got it.<|end|>"])
    resumed = Agent(engine2, Store(db), workspace=ws, session_id=session)
    status = resumed.memory_status()
    assert status.changed and "changed since; /memory reload" in describe(status)
    assert status.loaded_text == memory_before.text()  # what the model read, from the session's prompt
    assert "version 2" not in (resumed._system or "")  # the session's prompt is the one it started with
    resumed.send_sync("go on")
    assert resumed.memory_status().changed  # a plain message changes nothing
    message = resumed.memory_reload()
    assert message.startswith("The project instructions (AGENTS.md) changed") and "version 2" in message
    resumed.send_sync(message)
    assert "app rules, version 2" in engine2.prefill_log[-1]
    assert "NOTES BODY" not in engine2.prefill_log[-1]  # AGENTS.md's own @words attach nothing
    status = resumed.memory_status()
    assert not status.changed  # the reload message recorded what it gave the model
    assert status.loaded_text == load_project_memory(ws).text() and "version 2" in status.loaded_text
    [*_, last_user] = [e for e in resumed.store.events(session) if e.kind == "user"]
    assert last_user.data["project_memory"] == load_project_memory(ws).record()
    resumed.close()
