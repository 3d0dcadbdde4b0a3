"""The workflow features in the UI, driven through the pilot: `--resume` without an id opens the
session picker, the status bar's usage and git facts, `/status`, `/memory`, `@file` mentions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hybrid_agent.tui.screens.sessions import SessionBrowser
from hybrid_agent.tui.widgets.messages import Notice
from hybrid_agent.tui.widgets.prompt_input import PromptArea
from hybrid_agent.tui.widgets.status_bar import StatusBar, format_status
from textual.widgets import Static
from tui_testkit import Rig, ready, send, settle, until

pytestmark = pytest.mark.anyio


async def test_resume_without_id_opens_the_picker_and_resumes_the_choice(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["echo: old<|end|>", "echo: more<|end|>"], pick_session=True)
    earlier = rig.factory(approval=None)  # a session saved by an earlier run, on the same database
    async for _ in earlier.send("old work"):
        pass
    old = earlier.session_id
    earlier.close()
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        picker = lambda: isinstance(app.screen, SessionBrowser) and len(app.screen.rows) == 2
        await until(pilot, picker, "the session picker with both sessions")
        await pilot.press("slash", *"old", "enter")
        await pilot.pause()
        await pilot.press("enter")
        await settle(pilot)
        assert app.bridge.agent.session_id == old and app.bridge.agent.turn == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
async def test_status_bar_and_status_show_usage_and_git(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["echo: hi<|end|>"])
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q", "-b", "trunk"], cwd=rig.workspace, env=env, check=True)
    app = rig.app
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await settle(pilot)
        assert app.status_info.git == "trunk *"  # hello.py is not committed
        assert app.status_info.snapshot_bytes == 0 and app.status_info.session_s == 0
        await send(pilot, "hi")
        await settle(pilot)
        s, agent = app.status_info, rig.agent
        [meta] = [t.meta for t in agent.store.turns(agent.session_id)]
        assert s.snapshot_bytes == agent.store.snapshot_bytes()[agent.session_id] > 0
        assert s.session_s == meta["duration_s"] and s.prefill_tokens_per_s == pytest.approx(
            meta["prompt_tokens"] / meta["prefill_s"]
        )
        assert "git trunk *" in format_status(app.query_one(StatusBar).info)  # what is drawn
        await send(pilot, "/status")
        await settle(pilot)
        notice = app.query(Notice).last()
        lines = notice.text.splitlines()
        assert lines[0] == f"session {agent.session_id[:8]}:"
        assert f"state        {agent.state_tokens:,} tokens" in lines[1]
        assert lines[-1] == "git          trunk *"


async def test_at_completes_workspace_paths_and_attaches_the_file(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["echo: seen<|end|>"])
    (rig.workspace / "src" / "pkg").mkdir(parents=True)
    (rig.workspace / "src" / "pkg" / "mod.py").write_text("VALUE = 42\n")
    (rig.workspace / "src" / "build.log").write_text("ignored\n")
    (rig.workspace / ".gitignore").write_text("*.log\n")
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await settle(pilot)
        area = app.query_one(PromptArea)
        area.load_text("what is in @s")
        area.move_cursor(area.document.end)
        await pilot.pause()
        hint = app.query_one("#completions", Static)
        assert hint.display and str(hint.render()) == "@src/"
        await pilot.press("tab")
        assert area.text == "what is in @src/"
        await pilot.pause()
        assert str(hint.render()) == "@src/pkg/"  # build.log is .gitignore'd
        await pilot.press("tab", "tab")
        assert area.text == "what is in @src/pkg/mod.py"
        await pilot.press("space", *"and", "space", *"mail", "space", *"a@b.c")
        assert area.text.endswith("mail a@b.c") and not hint.display  # not a mention
        await pilot.press("enter")
        await settle(pilot)
        assert "VALUE = 42" in rig.engine.prefill_log[-1]
        assert [n.text for n in app.query(Notice)][-1] == "attached @src/pkg/mod.py (11 bytes)"


async def test_memory_shows_a_change_on_resume_and_reload_sends_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["echo: ok<|end|>", "echo: noted<|end|>"])
    (rig.workspace / "AGENTS.md").write_text("Use tabs.\n")
    earlier = rig.factory(approval=None)  # a session saved by an earlier run, on the same database
    async for _ in earlier.send("hello"):
        pass
    earlier.close()
    assert "Use tabs." in rig.engine.prefill_log[0]
    (rig.workspace / "AGENTS.md").write_text("Use spaces.\n")
    rig.resume = earlier.session_id
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await settle(pilot)
        notices = [n.text for n in app.query(Notice)]
        assert any(n.startswith("AGENTS.md changed since this session read it") for n in notices)
        await send(pilot, "/memory")
        await settle(pilot)
        shown = app.query(Notice).last().text
        read, _, now = shown.partition("changed since; /memory reload gives the model the new text")
        assert "read when the session started" in read and "Use tabs." in read and "Use spaces." not in read
        assert "Use spaces." in now
        await send(pilot, "/memory reload")
        await settle(pilot)
        assert "Use spaces." in rig.engine.prefill_log[-1] and rig.agent.turn == 2
        assert not rig.agent.memory_status().changed
        await send(pilot, "/memory reload")
        await settle(pilot)
        assert rig.agent.turn == 2  # nothing new to send
        await send(pilot, "/new")
        await send(pilot, "/memory")
        await settle(pilot)
        assert "not loaded yet: the session's first message reads:" in app.query(Notice).last().text
