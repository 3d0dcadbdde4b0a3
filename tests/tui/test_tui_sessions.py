"""The session browser and the slash commands, driven through the pilot."""

from __future__ import annotations

import pytest
from test_tui_app import make_app, send, settle

from tui.screens.dialogs import ConfirmScreen, TextPromptScreen
from tui.screens.help import HelpScreen
from tui.screens.sessions import SessionBrowser
from tui.widgets.messages import AssistantMessage, Notice, UserMessage
from tui.widgets.prompt_input import PromptArea

pytestmark = pytest.mark.anyio


def echo(text: str) -> list[str]:
    return [f"echo: {text}"]


async def test_browser_resume_shows_history_and_continues() -> None:
    app = make_app(echo)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
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


async def test_browser_rename_and_delete_with_confirm() -> None:
    app = make_app(echo)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
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


async def test_slash_commands() -> None:
    app = make_app(echo)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await send(pilot, "one")
        await settle(pilot)
        await send(pilot, "two")
        await settle(pilot)
        start = app.bridge.agent.session_id

        await send(pilot, "/fork")
        await settle(pilot)
        assert app.bridge.agent.session_id != start and app.bridge.agent.turn == 2

        await send(pilot, "/rewind 1")
        await settle(pilot)
        assert app.bridge.agent.turn == 1
        assert [u.text for u in app.query(UserMessage)] == ["one"]

        await send(pilot, "/undo")
        await settle(pilot)
        await send(pilot, "/model")
        await settle(pilot)
        notices = [n.text for n in app.query(Notice)]
        assert notices[-2].startswith("undo: ")
        assert "model tiny-hybrid on cpu" in notices[-1]

        await send(pilot, "/copy")
        await settle(pilot)
        assert app.clipboard == "echo: two"

        await send(pilot, "/bogus")
        await settle(pilot)
        assert len(app.query(Notice)) == len(notices)  # an unknown command only warns

        await send(pilot, "/help")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()

        await send(pilot, "/new")
        await settle(pilot)
        assert app.bridge.agent.turn == 0 and not app.query(UserMessage)

        await send(pilot, "/quit")
        await pilot.pause()
    assert app.return_code == 0


async def test_slash_completion_with_tab() -> None:
    app = make_app(echo)
    async with app.run_test() as pilot:
        await pilot.pause()
        area = app.query_one(PromptArea)
        await pilot.press("slash", "r")
        hint = app.query_one("#completions")
        assert hint.display and "/resume" in str(hint.render()) and "/rewind" in str(hint.render())
        await pilot.press("e", "s", "tab")
        assert area.text == "/resume "


async def test_command_palette_lists_agent_actions() -> None:
    app = make_app(echo)
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sessions")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SessionBrowser)
