"""The app driven headless through a pilot: streaming, approvals, cancel, sessions, input."""

from __future__ import annotations

import itertools

import pytest
from tui_fake_agent import FakeAgent

from agent.events import ToolCallRequested
from tui.app import WAITING_TITLE, HybridAgentApp
from tui.screens.approval import ApprovalScreen
from tui.screens.loading import LoadingScreen
from tui.widgets.messages import AssistantMessage, Notice, UserMessage
from tui.widgets.prompt_input import PromptArea
from tui.widgets.status_bar import StatusBar
from tui.widgets.tool_card import ToolCard

pytestmark = pytest.mark.anyio


def make_app(script, **kw) -> HybridAgentApp:
    return HybridAgentApp(
        lambda approval: FakeAgent(script, approval=approval, **kw),
        cursor_blink=False,
        system_clipboard=False,
    )


async def send(pilot, text: str) -> None:
    app = pilot.app
    app.query_one(PromptArea).load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def write_call(call_id: str) -> ToolCallRequested:
    return ToolCallRequested(
        call_id=call_id,
        tool="write_file",
        arguments={"path": "a.txt", "content": "x"},
        needs_approval=True,
        path="a.txt",
        diff="--- a/a.txt\n+++ b/a.txt\n@@ -0,0 +1 @@\n+x\n",
    )


async def test_send_message_streams_answer() -> None:
    app = make_app(lambda text: ["Hello", ", ", "**world**", "!"])
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press(*"hi", "enter")
        await settle(pilot)
        assert [u.text for u in app.query(UserMessage)] == ["hi"]
        assert [a.text for a in app.query(AssistantMessage)] == ["Hello, **world**!"]
        assert app.last_answer == "Hello, **world**!"
        assert app.status_info.saved_turn == 1
        assert app.status_info.tokens_per_s == 42.0


async def test_tool_call_approved_then_denied() -> None:
    calls = iter([write_call("c1"), write_call("c2")])
    app = make_app(lambda text: ["ok ", next(calls), "after"])
    async with app.run_test() as pilot:
        await pilot.pause()
        await send(pilot, "write it")
        await pilot.pause()
        assert isinstance(app.screen, ApprovalScreen)
        assert app.title == WAITING_TITLE
        await pilot.press("y")
        await settle(pilot)
        assert app.title == "hybrid-agent"
        card = app.query(ToolCard).last()
        assert (card.status, card.result.text) == ("done", "ok")

        await send(pilot, "again")
        await pilot.pause()
        assert isinstance(app.screen, ApprovalScreen)
        await pilot.press("n")
        await settle(pilot)
        card = app.query(ToolCard).last()
        assert card.status == "denied" and card.result.denied


async def test_reject_with_reason_goes_to_agent() -> None:
    decisions = []
    app = make_app(lambda text: [write_call("c1")])
    async with app.run_test() as pilot:
        await pilot.pause()
        real = app.bridge.agent.approval

        async def spy(call):
            decisions.append(await real(call))
            return decisions[-1]

        app.bridge.agent.approval = spy
        await send(pilot, "write")
        await pilot.press("r", *"use b.txt", "enter")
        await settle(pilot)
        assert decisions[0].allow is False and decisions[0].reason == "use b.txt"


async def test_cancel_mid_turn_keeps_last_snapshot() -> None:
    app = make_app(lambda text: (f"tok{i} " for i in itertools.count()), delay=0.01)  # never ends
    async with app.run_test() as pilot:
        await pilot.pause()
        await send(pilot, "long answer")
        while not app.query(AssistantMessage):
            await pilot.pause(0.05)
        assert app.bridge.turn_running
        await pilot.press("escape")
        await settle(pilot)
        assert not app.bridge.turn_running
        assert any("cancelled" in n.text for n in app.query(Notice))
        assert app.status_info.saved_turn is None  # nothing was committed for the cancelled turn
        assert app.bridge.agent.turn == 0


async def test_mode_cycles_and_is_visible() -> None:
    app = make_app(lambda text: [])
    async with app.run_test() as pilot:
        await pilot.pause()
        bar = app.query_one(StatusBar)
        seen = []
        for _ in range(3):
            await pilot.press("shift+tab")
            seen.append((bar.mode, app.bridge.agent.mode))
        assert seen == [("accept-edits",) * 2, ("auto",) * 2, ("ask",) * 2]
        assert "ask" in str(bar.query_one("#mode").render())


async def test_input_history_up_down() -> None:
    app = make_app(lambda text: ["."])
    async with app.run_test() as pilot:
        await pilot.pause()
        for text in ("first", "second"):
            await send(pilot, text)
            await settle(pilot)
        area = app.query_one(PromptArea)
        area.focus()
        await pilot.press(*"draft")
        await pilot.press("up")
        assert area.text == "second"
        await pilot.press("up")
        assert area.text == "first"
        await pilot.press("down", "down")
        assert area.text == "draft"


async def test_old_messages_are_pruned_from_the_dom() -> None:
    app = HybridAgentApp(lambda approval: FakeAgent(lambda t: ["answer"], approval=approval), max_widgets=6)
    async with app.run_test() as pilot:
        await pilot.pause()
        for i in range(6):
            await send(pilot, f"message {i}")
            await settle(pilot)
        conv = app.conversation
        assert len(conv.messages()) == 6
        assert conv.pruned == 6
        assert [u.text for u in app.query(UserMessage)] == ["message 3", "message 4", "message 5"]
        assert len(app.bridge.agent.history()) == 12  # still all in the session's store


async def test_bad_model_shows_error_instead_of_crashing() -> None:
    class BadModelPath(Exception):
        __module__ = "model.errors"

    def factory(approval):
        raise BadModelPath("no model at /nope: pass --model PATH to a checkpoint directory")

    app = HybridAgentApp(factory)
    async with app.run_test() as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, LoadingScreen)
        assert "no model at /nope" in str(app.screen.query_one("#loading-what").render())
        await pilot.press("q")
    assert app.return_code == 0


async def test_theme_toggles() -> None:
    app = make_app(lambda text: [])
    async with app.run_test() as pilot:
        await pilot.pause()
        dark = app.current_theme.dark
        await pilot.press("ctrl+t")
        assert app.current_theme.dark is not dark


async def test_quit_mid_turn_cancels_and_exits() -> None:
    app = make_app(lambda text: (f"t{i} " for i in itertools.count()), delay=0.01)
    async with app.run_test() as pilot:
        await pilot.pause()
        await send(pilot, "go")
        await pilot.pause(0.1)
        agent = app.bridge.agent
        await pilot.press("ctrl+q")
        await pilot.pause(0.5)
    assert agent.turn == 0 and agent.history() == []  # the cancelled turn left nothing half-written
