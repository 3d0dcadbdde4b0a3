from __future__ import annotations

import pytest
from tui_fake_agent import FakeAgent

from tui.app import HybridAgentApp
from tui.widgets.messages import AssistantMessage, UserMessage

pytestmark = pytest.mark.anyio


def make_app(script, **kw) -> HybridAgentApp:
    return HybridAgentApp(lambda approval: FakeAgent(script, approval=approval, **kw), cursor_blink=False,
                          system_clipboard=False)


async def test_send_message_streams_answer() -> None:
    app = make_app(lambda text: ["Hello", ", ", "**world**", "!"])
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press(*"hi", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        users = list(app.query(UserMessage))
        answers = list(app.query(AssistantMessage))
        assert [u.text for u in users] == ["hi"]
        assert [a.text for a in answers] == ["Hello, **world**!"]
        assert app.last_answer == "Hello, **world**!"
        assert app.status_info.saved_turn == 1
