"""The session browser and the slash commands, driven through the pilot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.tui.screens.dialogs import ConfirmScreen, TextPromptScreen
from hybrid_agent.tui.screens.help import HelpScreen
from hybrid_agent.tui.screens.sessions import SessionBrowser
from hybrid_agent.tui.widgets.messages import AssistantMessage, Notice, UserMessage
from hybrid_agent.tui.widgets.prompt_input import PromptArea
from hybrid_agent.tui.widgets.status_bar import StatusBar
from tui_testkit import Rig, ready, send, settle, tool_call

pytestmark = pytest.mark.anyio


def echo_rig(tmp_path: Path, *texts: str) -> Rig:
    return Rig(tmp_path, [f"echo: {t}<|end|>" for t in texts])


async def test_browser_resume_shows_history_and_continues(tmp_path: Path) -> None:
    rig = echo_rig(tmp_path, "first session", "second session", "more")
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "first session")
        await settle(pilot)
        first = app.bridge.agent.session_id
        await send(pilot, "/new")
        await settle(pilot)
        assert not app.query(UserMessage)
        await send(pilot, "second session")
        await settle(pilot)

        await pilot.press("ctrl+o")
        await pilot.pause()
        browser = app.screen
        assert isinstance(browser, SessionBrowser)
        assert len(browser.rows) == 2
        # Find the first session by searching for it, then resume it.
        await pilot.press("slash", *"first", "enter")
        await pilot.pause()
        await pilot.press("enter")
        await settle(pilot)
        assert app.bridge.agent.session_id == first
        assert [u.text for u in app.query(UserMessage)] == ["first session"]
        assert [a.text for a in app.query(AssistantMessage)] == ["echo: first session"]
        await send(pilot, "more")
        await settle(pilot)
        assert app.bridge.agent.turn == 2
        assert app.status_info.saved_turn == 2


async def test_browser_rename_and_delete_with_confirm(tmp_path: Path) -> None:
    app = echo_rig(tmp_path, "keep me").app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "keep me")
        await settle(pilot)
        await send(pilot, "/new")
        await settle(pilot)
        current = app.bridge.agent.session_id
        await pilot.press("ctrl+o")
        await pilot.pause()
        browser = app.screen
        assert isinstance(browser, SessionBrowser)
        # Rows are newest first; move to the one that is not open.
        other = next(r for r in browser.rows if r.id != current)
        while browser._selected() != other.id:
            await pilot.press("down")
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPromptScreen)
        app.screen.query_one("#text").value = ""
        await pilot.press(*"renamed", "enter")
        await pilot.pause()
        assert any(r.title == "renamed" for r in browser.rows)
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # no: nothing happens
        await pilot.pause()
        assert len(browser.rows) == 2
        await pilot.press("d", "y")
        await pilot.pause()
        assert [r.id for r in browser.rows] == [current]
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, SessionBrowser)


async def test_browser_fork_opens_a_copy(tmp_path: Path) -> None:
    rig = echo_rig(tmp_path, "original", "in the fork")
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "original")
        await settle(pilot)
        original = rig.agent.session_id
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("f")
        await settle(pilot)
        assert rig.agent.session_id != original and rig.agent.turn == 1
        assert [u.text for u in app.query(UserMessage)] == ["original"]
        await send(pilot, "in the fork")
        await settle(pilot)
        store = rig.store()
        assert store.get_session(original).latest_turn == 1  # the original is untouched
        assert store.get_session(rig.agent.session_id).latest_turn == 2


def notices(app) -> list[str]:
    return [n.text for n in app.conversation.messages() if isinstance(n, Notice)]


async def test_slash_commands(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [
        tool_call("write_file", path="a.txt", content="1"), "echo: one<|end|>",
        tool_call("write_file", path="a.txt", content="2"), "echo: two<|end|>",
    ])  # fmt: skip
    app = rig.app
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("shift+tab", "shift+tab")  # auto: tools run without asking
        await send(pilot, "one")
        await settle(pilot)
        await send(pilot, "two")
        await settle(pilot)
        assert (rig.workspace / "a.txt").read_text() == "2"

        await send(pilot, "/undo")
        await settle(pilot)
        assert notices(app)[-1].startswith("undo: undid the change to a.txt")
        assert (rig.workspace / "a.txt").read_text() == "1"

        start = rig.agent.session_id
        await send(pilot, "/fork")
        await settle(pilot)
        assert rig.agent.session_id != start and rig.agent.turn == 2

        await send(pilot, "/rewind 1")
        await settle(pilot)
        assert rig.agent.turn == 1
        assert [u.text for u in app.query(UserMessage)] == ["one"]
        assert [a.text for a in app.query(AssistantMessage)] == ["echo: one"]

        await send(pilot, "/tools")
        await settle(pilot)
        tools = notices(app)[-1]
        assert tools.startswith("tools:") and "read_file" in tools and "write_file" in tools

        await send(pilot, "/model")
        await settle(pilot)
        assert notices(app)[-1].startswith("model scripted on cpu; state ")

        await send(pilot, "/copy")
        await settle(pilot)
        assert app.clipboard == "echo: two"

        count, turn = len(notices(app)), app.bridge.agent.turn
        await send(pilot, "/bogus")
        await settle(pilot)
        assert len(notices(app)) == count  # an unknown command only warns (a toast)
        assert app.bridge.agent.turn == turn  # ... and never reaches the model

        await send(pilot, "/help")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()

        await send(pilot, f"/resume {start[:8]}")  # a unique prefix is enough
        await settle(pilot)
        assert (rig.agent.session_id, rig.agent.turn) == (start, 2)
        assert [u.text for u in app.query(UserMessage)] == ["one", "two"]

        await send(pilot, "/new")
        await settle(pilot)
        assert rig.agent.turn == 0 and not app.query(UserMessage)

        await send(pilot, "/quit")
        await pilot.pause()
    assert app.return_code == 0


async def test_slash_completion_with_tab(tmp_path: Path) -> None:
    app = Rig(tmp_path).app
    async with app.run_test() as pilot:
        await ready(pilot)
        area = app.query_one(PromptArea)
        await pilot.press("slash", "r")
        hint = app.query_one("#completions")
        assert hint.display and "/resume" in str(hint.render()) and "/rewind" in str(hint.render())
        await pilot.press("e", "s", "tab")
        assert area.text == "/resume "


async def test_command_palette_lists_agent_actions(tmp_path: Path) -> None:
    app = Rig(tmp_path).app
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sessions")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SessionBrowser)


async def test_status_bar_follows_resume_and_fork(tmp_path: Path) -> None:
    rig = echo_rig(tmp_path, "a1", "a2", "b1")
    app = rig.app

    def shows(turn: int | None) -> bool:
        """The session's own saved turn, and its last turn's recorded speed (none for a new one)."""
        s, agent = app.status_info, rig.agent
        metas = [t.meta for t in agent.store.turns(agent.session_id)] if turn else []
        speed = metas[-1]["completion_tokens"] / metas[-1]["decode_s"] if metas else None
        return (s.saved_turn, s.tokens_per_s, s.state_tokens) == (turn, speed, agent.state_tokens)

    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        for text in ("a1", "a2"):
            await send(pilot, text)
            await settle(pilot)
        first = rig.agent.session_id
        await send(pilot, "/new")
        await settle(pilot)
        assert shows(None)  # no speed of the other session's last turn
        await send(pilot, "b1")
        await settle(pilot)
        assert app.status_info.saved_turn == 1 and app.status_info.tokens_per_s is not None
        await send(pilot, f"/resume {first[:8]}")
        await settle(pilot)
        assert rig.agent.session_id == first and shows(2)
        await send(pilot, "/fork 1")
        await settle(pilot)
        assert rig.agent.turn == 1 and shows(1)
        await send(pilot, "/fork")
        await settle(pilot)
        assert rig.agent.turn == 1 and shows(1)
        assert app.query_one(StatusBar).info == app.status_info  # what is drawn


async def test_tools_lists_plugins_that_failed_to_load(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    factory = rig.factory

    def with_a_broken_plugin(approval: Any) -> Any:
        agent = factory(approval)
        agent.registry.plugin_errors.append(
            "plugin 'broken' (brokenplug:tool) from fake-tools was skipped: ImportError: needs libfoo"
        )
        return agent

    app = rig.app
    app.agent_factory = with_a_broken_plugin
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await settle(pilot)
        toasts = [n.message for n in app._notifications]
        assert "1 tool plugin(s) failed to load; /tools names them" in toasts, toasts
        await send(pilot, "/tools")
        await settle(pilot)
        tools = notices(app)[-1]
        assert "read_file" in tools
        assert "✗ not loaded: plugin 'broken' (brokenplug:tool) from fake-tools was skipped" in tools


async def test_a_long_message_shows_reading_progress(tmp_path: Path) -> None:
    rig = echo_rig(tmp_path, "long")
    app = rig.app
    busy: list[str | None] = []
    refresh = app.refresh_status

    def record(**changes: Any) -> None:
        busy.append(changes.get("busy"))
        refresh(**changes)

    app.refresh_status = record  # type: ignore[method-assign]
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "q" * 5000)
        await settle(pilot)
    reading = [b for b in busy if b and b.startswith("reading ")]
    assert reading and reading[0].startswith("reading 2,048/") and "tok/s" in reading[0], busy


async def test_diff_shows_the_sessions_file_changes_per_turn(tmp_path: Path) -> None:
    from hybrid_agent.agent.session_diff import session_diff
    from hybrid_agent.tui.widgets.diff_view import DiffView

    rig = Rig(tmp_path, [
        tool_call("write_file", path="a.txt", content="one\n"), "done<|end|>",
        tool_call("write_file", path="b.py", content="x = 2\n"), "done<|end|>",
    ])  # fmt: skip
    app = rig.app
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "/diff")
        await settle(pilot)
        assert notices(app)[-1].startswith("diff: no file changes in the session")
        await pilot.press("shift+tab", "shift+tab")  # auto: tools run without asking
        for text in ("one", "two"):
            await send(pilot, text)
            await settle(pilot)
        await send(pilot, "/diff")
        await settle(pilot)
        assert notices(app)[-1] == "diff: 2 file(s) changed in the session: a.txt, b.py"
        shown = [v.diff for v in app.query(DiffView) if v.has_class("session-diff")]
        # What the CLI prints (`sessions diff`), split by file.
        assert "".join(shown) == session_diff(rig.agent.registry.journal.entries())
        assert "+x = 2" in shown[1] and "new file mode" in shown[0]
        await send(pilot, "/diff 2")
        await settle(pilot)
        assert notices(app)[-1] == "diff: 1 file(s) changed in turn 2: b.py"
        await send(pilot, "/undo")
        await settle(pilot)
        await send(pilot, "/diff 2")
        await settle(pilot)
        assert notices(app)[-1].startswith("diff: no file changes in turn 2")
        await send(pilot, "/diff x")
        await settle(pilot)
        assert any("usage: /diff [N]" in n.message for n in app._notifications)
