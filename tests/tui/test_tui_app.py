"""The app driven headless through a pilot, around a real Agent (scripted engine, real Store, real
tools): streaming, approvals, cancel, quitting mid-turn, modes, input history, pruning, load errors."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.tui.app import HybridAgentApp
from hybrid_agent.tui.bridge import FRAME_S
from hybrid_agent.tui.screens.approval import ApprovalScreen
from hybrid_agent.tui.turns import WAITING_TITLE
from hybrid_agent.tui.widgets.loading import LoadingPanel
from hybrid_agent.tui.widgets.messages import AssistantMessage, Notice, UserMessage
from hybrid_agent.tui.widgets.prompt_input import PromptArea
from hybrid_agent.tui.widgets.status_bar import StatusBar
from hybrid_agent.tui.widgets.tool_card import ToolCard
from tui_testkit import Rig, ready, send, settle, tool_call, until

pytestmark = pytest.mark.anyio


async def send_raw(pilot: Any, text: str) -> None:
    """Type and send without waiting for the agent (it may be loading, or failed to load)."""
    pilot.app.query_one(PromptArea).load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def test_send_message_streams_answer(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["Hello, **world**!<|end|>"])
    async with rig.app.run_test() as pilot:
        await ready(pilot)
        await pilot.press(*"hi", "enter")
        await settle(pilot)
        app = rig.app
        assert [u.text for u in app.query(UserMessage)] == ["hi"]
        assert [a.text for a in app.query(AssistantMessage)] == ["Hello, **world**!"]
        assert app.last_answer == "Hello, **world**!"
        s = app.status_info
        assert (s.saved_turn, s.model, s.device) == (1, "scripted", "cpu")
        assert s.state_tokens == rig.engine.n_tokens and s.state_bytes == rig.engine.state_bytes
    store = rig.store()
    assert store.load_snapshot(rig.agent.session_id).turn == 1  # the 'saved' shown is in the database


async def test_tool_call_approved_then_denied(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [
        "Writing." + tool_call("write_file", path="a.txt", content="x\n"), "Done.<|end|>",
        "Again." + tool_call("write_file", path="b.txt", content="y\n"), "Fine.<|end|>",
    ])  # fmt: skip
    app = rig.app
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "write a")
        await pilot.pause()
        assert isinstance(app.screen, ApprovalScreen)
        assert app.screen.call.diff and "+x" in app.screen.call.diff
        assert app.title == WAITING_TITLE
        await pilot.press("y")
        await settle(pilot)
        assert app.title == "hybrid-agent"
        card = app.query(ToolCard).last()
        assert card.status == "done" and not card.result.is_error
        assert (rig.workspace / "a.txt").read_text() == "x\n"
        assert [a.text for a in app.query(AssistantMessage)] == ["Writing.", "Done."]

        await send(pilot, "write b")
        await pilot.pause()
        assert isinstance(app.screen, ApprovalScreen)
        await pilot.press("r", *"not now", "enter")  # reject with a reason for the model
        await settle(pilot)
        card = app.query(ToolCard).last()
        assert card.status == "denied" and card.result.denied
        assert "not now" in card.result.text
        assert not (rig.workspace / "b.txt").exists()
        assert "not now" in rig.engine.text  # the reason went back to the model


async def test_allow_always_stops_asking(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [
        tool_call("write_file", path="a.txt", content="1"),
        tool_call("write_file", path="a.txt", content="2"),
        "ok<|end|>",
    ])  # fmt: skip
    app = rig.app
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "write twice")
        await pilot.pause()
        await pilot.press("a")
        await settle(pilot)
        assert [c.status for c in app.query(ToolCard)] == ["done", "done"]
        assert (rig.workspace / "a.txt").read_text() == "2"


@pytest.mark.parametrize("key", ["escape", "ctrl+c"])
async def test_cancel_mid_turn_keeps_last_snapshot(tmp_path: Path, key: str) -> None:
    rig = Rig(tmp_path, ["First.<|end|>", "word " * 1000])
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "one")
        await settle(pilot)
        saved_tokens = rig.engine.n_tokens
        rig.hold_until_cancelled()  # the second answer cannot end before the key is handled
        await send(pilot, "long answer")
        await until(pilot, lambda: len(app.query(AssistantMessage)) == 2, "the second answer to start")
        assert app.bridge.turn_running
        await pilot.press(key)
        await settle(pilot)
        assert not app.bridge.turn_running
        assert any("cancelled" in n.text for n in app.query(Notice)), [n.text for n in app.query(Notice)]
        assert app.status_info.saved_turn == 1
        assert (rig.agent.turn, rig.engine.n_tokens) == (1, saved_tokens)  # back at the last snapshot
    assert rig.store().load_snapshot(rig.agent.session_id).turn == 1


async def test_quit_mid_turn_leaves_database_whole(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["First.<|end|>", "word " * 1000])
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "one")
        await settle(pilot)
        rig.hold_until_cancelled()  # quitting cancels the turn; it cannot end on its own first
        await send(pilot, "two")
        await until(pilot, lambda: len(app.query(AssistantMessage)) == 2, "the second answer to start")
        await pilot.press("ctrl+q")
        await pilot.pause(0.3)
    assert app.return_code == 0
    db = tmp_path / "sessions.db"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = rig.store()
    assert store.load_snapshot(rig.agent.session_id).turn == 1
    assert [e.kind for e in store.events(rig.agent.session_id)] == ["system", "user", "assistant"]


async def test_mode_cycles_and_is_visible(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    async with rig.app.run_test() as pilot:
        await ready(pilot)
        bar = rig.app.query_one(StatusBar)
        seen = []
        for _ in range(3):
            await pilot.press("shift+tab")
            seen.append((bar.mode, rig.agent.mode, str(bar.query_one("#mode").render()).strip()))
        assert seen == [
            ("accept-edits", "accept-edits", "accept-edits ⇧⇥"),
            ("auto", "auto", "auto ⇧⇥"),
            ("plan", "plan", "plan ⇧⇥"),
        ]
        await pilot.press("shift+tab")
        assert (bar.mode, rig.agent.mode) == ("ask", "ask")


async def test_accept_edits_mode_writes_without_asking(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [tool_call("write_file", path="a.txt", content="z"), "ok<|end|>"])
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("shift+tab")
        await send(pilot, "write")
        await settle(pilot)
        assert not isinstance(app.screen, ApprovalScreen)
        assert (rig.workspace / "a.txt").read_text() == "z"


async def test_input_history_up_down(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["a<|end|>", "b<|end|>"])
    async with rig.app.run_test() as pilot:
        await ready(pilot)
        for text in ("first", "second"):
            await send(pilot, text)
            await settle(pilot)
        area = rig.app.query_one(PromptArea)
        area.focus()
        await pilot.press(*"draft")
        await pilot.press("up")
        assert area.text == "second"
        await pilot.press("up")
        assert area.text == "first"
        await pilot.press("down", "down")
        assert area.text == "draft"
        area.load_text("line one")
        area.move_cursor(area.document.end)
        await pilot.press("shift+enter", *"two")
        assert area.text == "line one\ntwo"  # multi-line input


async def test_old_messages_are_pruned_from_the_dom(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [f"answer {i}<|end|>" for i in range(6)], max_widgets=6)
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        for i in range(6):
            await send(pilot, f"message {i}")
            await settle(pilot)
        conv = app.conversation
        assert len(conv.messages()) == 6 and conv.pruned == 6
        assert [u.text for u in app.query(UserMessage)] == ["message 3", "message 4", "message 5"]
        kinds = [e.kind for e in rig.agent.history()]
        assert kinds.count("user") == 6  # all still in the database


async def test_bad_model_path_shows_error_instead_of_crashing(tmp_path: Path) -> None:
    from hybrid_agent.agent import Agent

    app = HybridAgentApp(
        lambda approval: Agent.open(model=tmp_path / "nope", db=f"sqlite:///{tmp_path}/x.db")
    )
    async with app.run_test() as pilot:
        await until(pilot, lambda: bool(app.query(LoadingPanel).filter(".failed")), "the load to fail")
        shown = str(app.query_one("#loading-what").render())
        assert shown.startswith("Could not start:") and "nope" in shown
        await send_raw(pilot, "hello")  # typing still works; it is not sent anywhere, and nothing crashes
        assert not app.query(UserMessage)
        await pilot.press("ctrl+q")
    assert app.return_code == 0


async def test_message_typed_while_loading_is_sent_once_ready(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["Ready now.<|end|>"])
    gate = threading.Event()
    factory = rig.factory

    def slow_factory(approval: Any) -> Any:
        gate.wait(30)  # the model 'loads' until the test has typed its message
        return factory(approval)

    rig.app.agent_factory = slow_factory
    app = rig.app
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.query(LoadingPanel) and app.bridge.agent is None
        await send_raw(pilot, "early bird")
        gate.set()
        await ready(pilot)
        await settle(pilot)
        assert [u.text for u in app.query(UserMessage)] == ["early bird"]
        assert app.last_answer == "Ready now."


async def test_theme_toggles(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    async with rig.app.run_test() as pilot:
        await ready(pilot)
        dark = rig.app.current_theme.dark
        await pilot.press("ctrl+t")
        assert rig.app.current_theme.dark is not dark


async def test_reopening_a_session_redraws_it_and_continues_from_its_state(tmp_path: Path) -> None:
    first = Rig(tmp_path, ["A tool." + tool_call("read_file", path="hello.py"), "It prints hello.<|end|>"])
    async with first.app.run_test() as pilot:
        await send(pilot, "what does hello.py print?")
        await settle(pilot)
        session, tokens = first.agent.session_id, first.engine.n_tokens
    # A new process, in effect: new app, new engine, same database (what --resume ID does).
    second = Rig(tmp_path, ["Yes.<|end|>"], resume=session)
    app = second.app
    async with app.run_test() as pilot:
        await ready(pilot)
        await settle(pilot)
        assert [u.text for u in app.query(UserMessage)] == ["what does hello.py print?"]
        assert [a.text for a in app.query(AssistantMessage)] == ["A tool.", "It prints hello."]
        (card,) = app.query(ToolCard)
        assert (card.call.tool, card.status) == ("read_file", "done") and "hello" in card.result.text
        assert second.engine.n_tokens == tokens  # the state came back from the snapshot, not a re-read
        await send(pilot, "sure?")
        await settle(pilot)
        assert second.agent.turn == 2
        assert second.engine.prefill_log == ["<|user|>sure?<|end|><|assistant|>"]  # only the new segment


async def test_fast_stream_is_batched_and_exact(tmp_path: Path) -> None:
    reply = "".join(f"w{i:03d} " for i in range(200))  # 1,000 tokens (the turn's limit is 1,024)
    rig = Rig(tmp_path, [reply + "<|end|>"])
    app = rig.app
    appends = 0
    original = AssistantMessage.append_text

    async def counting(self: AssistantMessage, fragment: str) -> None:
        nonlocal appends
        appends += 1
        await original(self, fragment)

    AssistantMessage.append_text = counting  # type: ignore[method-assign]
    try:
        async with app.run_test() as pilot:
            started = time.monotonic()
            await send(pilot, "go")
            await settle(pilot)
            elapsed = time.monotonic() - started
    finally:
        AssistantMessage.append_text = original  # type: ignore[method-assign]
    assert app.last_answer == reply
    # Deltas that arrive within one frame become one Markdown append: the UI's work is bounded by the
    # frame rate whatever the model's speed (a per-token append would give 1,000 here).
    assert appends <= elapsed / FRAME_S + 2, (appends, elapsed)


async def test_approval_prompt_shows_command_and_source(tmp_path: Path) -> None:
    from hybrid_agent.agent.events import ToolCallRequested

    rig = Rig(tmp_path)
    app = rig.app
    call = ToolCallRequested(
        call_id="c1", tool="shell", arguments={"cmd": "make clean"}, source="mcp:devbox",
        needs_approval=True, command="make clean",
    )  # fmt: skip
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        answer = asyncio.ensure_future(app.ask_user(call))
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval prompt")
        text = " ".join(str(w.render()) for w in app.screen.query("Static"))
        assert "Allow shell? (MCP server devbox)" in text and "make clean" in text
        await pilot.press("d")
        decision = await answer
        assert (decision.allow, decision.always) == (False, True)


async def test_a_turn_another_window_saved_first_is_kept_on_a_fork(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["One.<|end|>", "Mine.<|end|>"])
    async with rig.app.run_test() as pilot:
        await send(pilot, "hi")
        await settle(pilot)
        session = rig.agent.session_id
        # The same session open in another window, which saves turn 2 first.
        other = Rig(tmp_path, ["Theirs.<|end|>"], resume=session).factory(None)
        ends = [e async for e in other.send("from the other window") if type(e).__name__ == "TurnEnd"]
        assert [e.turn for e in ends] == [2]
        other.close()
        await send(pilot, "from this window")
        await settle(pilot)
        fork = rig.agent.session_id
        assert fork != session and rig.app.status_info.saved_turn == 2
        notices = [n.text for n in rig.app.query(Notice)]
        assert any(f"saved turn 2 of session {session} first" in t and fork in t for t in notices), notices
        assert rig.app.sub_title == "hi (fork at turn 1)"
    store = rig.store()
    assert [e.content for e in store.events(fork) if e.kind == "user"] == ["hi", "from this window"]
    assert [e.content for e in store.events(session) if e.kind == "user"] == ["hi", "from the other window"]
