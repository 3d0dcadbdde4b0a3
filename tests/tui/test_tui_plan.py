"""Plan mode in the UI (tui/plan_actions.py, agent/plan.py), around a real Agent: shift+tab reaches
plan mode, a writer call is refused, the answer comes with "Accept plan", which switches back to the
mode before plan and carries the plan out in the same session; the mode changes are in its events."""

from __future__ import annotations

from pathlib import Path

import pytest
from hybrid_agent.tui.screens.approval import ApprovalScreen
from hybrid_agent.tui.widgets.messages import UserMessage
from hybrid_agent.tui.widgets.plan_card import PlanCard
from hybrid_agent.tui.widgets.status_bar import StatusBar
from hybrid_agent.tui.widgets.tool_card import ToolCard
from textual.widgets import Button
from tui_testkit import Rig, ready, send, settle, tool_call, until

pytestmark = pytest.mark.anyio

PLAN = "1. Write notes.txt.<|end|>"


async def test_accepting_a_plan_carries_it_out_in_the_same_session(tmp_path: Path) -> None:
    replies = [tool_call("write_file", path="notes.txt", content="x"), PLAN]
    rig = Rig(tmp_path, [*replies, tool_call("write_file", path="notes.txt", content="x"), "Done.<|end|>"])
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        bar = app.query_one(StatusBar)
        await pilot.press("shift+tab", "shift+tab")  # ask -> accept-edits -> auto
        await pilot.press("shift+tab")
        assert bar.mode == rig.agent.mode == "plan"
        await send(pilot, "add notes")
        await settle(pilot)
        # The write was refused without asking; no file yet.
        assert not isinstance(app.screen, ApprovalScreen)
        assert not (rig.workspace / "notes.txt").exists()
        [card] = app.query(ToolCard)
        assert card.result is not None and card.result.text.startswith("plan mode is on")
        [plan] = app.query(PlanCard)
        assert plan.back_to == "auto" and not plan.query_one(Button).disabled
        session = rig.agent.session_id
        await pilot.click("#accept-plan")
        await settle(pilot)
        assert bar.mode == rig.agent.mode == "auto"
        assert (rig.workspace / "notes.txt").read_text() == "x"  # auto: written without asking
        assert rig.agent.session_id == session and rig.agent.turn == 2
        assert plan.query_one(Button).disabled
        assert str(app.query(UserMessage)[-1].render()).startswith("I accept the plan")
        # Nothing left to accept: the key says so instead of sending anything.
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert rig.agent.turn == 2
    events = rig.store().events(session)
    changes = [e.data["mode"]["to"] for e in events if "mode" in (e.data or {})]
    assert changes == ["accept-edits", "auto", "plan", "auto"]


async def test_ctrl_g_accepts_and_a_new_message_supersedes_the_plan(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [PLAN, "2. Other plan.<|end|>", "Carried out.<|end|>"])
    app = rig.app
    async with app.run_test() as pilot:
        await ready(pilot)
        rig.agent.mode = "plan"
        app.query_one(StatusBar).mode = "plan"
        await send(pilot, "plan one")
        await settle(pilot)
        await send(pilot, "no, plan two")  # typed instead of accepting: the first plan is closed
        await settle(pilot)
        first, second = app.query(PlanCard)
        assert first.query_one(Button).disabled and not second.query_one(Button).disabled
        assert second.back_to == "ask"
        await pilot.press("ctrl+g")
        await settle(pilot)
        await until(pilot, lambda: rig.agent.turn == 3, "the plan to be carried out")
        assert rig.agent.mode == app.query_one(StatusBar).mode == "ask"
