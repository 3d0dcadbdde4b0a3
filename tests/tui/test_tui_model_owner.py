"""One owner of the model in the app (tui/bridge.py, agent/owner.py): loading the agent, a turn, a
cancelled turn's roll-back, a fork, a rewind and a resume all run their engine calls on the agent's
one model thread; the UI's own thread runs none, and the bridge starts no thread or loop of its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hybrid_agent.tui.widgets.messages import AssistantMessage
from tui_testkit import Rig, ready, send, settle, until

pytestmark = pytest.mark.anyio


async def test_ui_turns_and_session_commands_run_on_the_model_thread(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["One.<|end|>", "Two.<|end|>", "word " * 1000])
    seen = rig.engine.record_threads()  # before the app starts: the agent is built with it
    app = rig.app
    before = set(threading.enumerate())
    async with app.run_test() as pilot:
        await ready(pilot)
        for text in ("one", "two"):
            await send(pilot, text)
            await settle(pilot)
        first = rig.agent.session_id
        rig.hold_until_cancelled()
        await send(pilot, "three")
        await until(pilot, lambda: len(app.query(AssistantMessage)) == 3, "the third answer to start")
        await pilot.press("escape")  # rolled back to turn 2 on the model thread
        await settle(pilot)
        rig.engine.step_hook = None
        assert (rig.agent.turn, rig.agent.session_id) == (2, first)
        for command in ("/fork 1", "/rewind 1 files", f"/resume {first[:8]}"):
            await send(pilot, command)
            await settle(pilot)
        assert (rig.agent.session_id, rig.agent.turn) == (first, 2)

        started = set(threading.enumerate()) - before
        bridge_owner = getattr(app.bridge, "owner", None)

    called = {name for name, _ in seen}
    assert {"reset", "encode", "prefill", "next_token", "snapshot", "restore"} <= called
    (thread,) = {thread for _, thread in seen}  # one thread ran them all ...
    assert thread is not threading.current_thread()  # ... not the UI's
    assert not any(t.name == "agent" for t in started)  # and the bridge started none of its own
    owner = rig.agent.model_owner
    assert bridge_owner is owner and owner.thread is thread  # the agent kept the thread it was built on
    assert not thread.is_alive()  # quitting stopped it
