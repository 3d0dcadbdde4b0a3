"""The workflow features in the UI, driven through the pilot: `--resume` without an id opens the
session picker, the status bar's usage and git facts, `/status`, `/memory`, `@file` mentions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hybrid_agent.tui.screens.sessions import SessionBrowser
from tui_testkit import Rig, ready, send, settle, until

pytestmark = pytest.mark.anyio


async def test_resume_without_id_opens_the_picker_and_resumes_the_choice(tmp_path: Path) -> None:
    first = Rig(tmp_path, ["echo: old<|end|>"])
    async with first.app.run_test(size=(100, 30)) as pilot:
        await send(pilot, "old work")
        await settle(pilot)
        old = first.agent.session_id
    rig = Rig(tmp_path, ["echo: more<|end|>"], pick_session=True)
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
