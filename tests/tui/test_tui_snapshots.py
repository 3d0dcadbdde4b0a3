"""Snapshot tests of the main screens (pytest-textual-snapshot). Deterministic: the scripted engine
says the same thing every run, the workspace sits at a fixed path, the cursor does not blink, speed
(tokens/s, the one measured number) is pinned, and toasts are cleared before the picture.

Update after an intended change: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.tui.screens.approval import ApprovalScreen
from hybrid_agent.tui.screens.sessions import SessionBrowser
from tui_testkit import Rig, fixed_dir, ready, send, settle, tool_call, until

SIZE = (100, 34)

ANSWER = """Here is the function, with a test:

```python
def add(a: int, b: int) -> int:
    return a + b
```

It handles **negative** numbers too."""


def conversation_rig(name: str, *extra: str, **kw: Any) -> Rig:
    return Rig(fixed_dir(name), [
        "Let me look." + tool_call("read_file", path="hello.py"),
        "I'll change the greeting." + tool_call(
            "edit_file", path="hello.py", old_string='print("hello")', new_string='print("hello, world")'
        ),
        ANSWER + "<|end|>",
        *extra,
    ], **kw)  # fmt: skip


def pin_status(app: Any) -> None:
    """Pin the numbers that are not about the UI: speeds and times are measured, and the state's size
    (and its snapshots') follows the system segment, which holds every tool's schema (other packages
    edit those)."""
    app.refresh_status(
        tokens_per_s=123.4, state_tokens=4096, state_bytes=32_768, prefill_tokens_per_s=2345.6,
        session_s=3.0, snapshot_bytes=65_536,
    )  # fmt: skip


async def finish(pilot: Any) -> None:
    """Pin what varies between runs, then let everything draw."""
    await settle(pilot)
    pin_status(pilot.app)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_snapshot_conversation(snap_compare) -> None:
    rig = conversation_rig("snap-conversation")

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await pilot.press("shift+tab", "shift+tab")  # auto: the edit runs without a prompt
        await send(pilot, "make hello.py greet the world")
        await finish(pilot)

    assert snap_compare(rig.app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_approval_prompt(snap_compare) -> None:
    rig = Rig(fixed_dir("snap-approval"), [
        "I'll change the greeting." + tool_call(
            "edit_file", path="hello.py", old_string='print("hello")', new_string='print("hello, world")'
        ),
        "Done.<|end|>",
    ])  # fmt: skip

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await send(pilot, "make hello.py greet the world")
        await until(pilot, lambda: isinstance(pilot.app.screen, ApprovalScreen), "the approval prompt")
        pin_status(pilot.app)
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(rig.app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_session_browser(snap_compare) -> None:
    rig = Rig(
        fixed_dir("snap-browser"), ["Sure.<|end|>", "Done.<|end|>", "Hi.<|end|>", "Ok.<|end|>"], tools=False
    )

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await send(pilot, "refactor the parser")
        await settle(pilot)
        await send(pilot, "and add tests")
        await settle(pilot)
        await send(pilot, "/new")
        await settle(pilot)
        await send(pilot, "explain the state cache")
        await settle(pilot)
        await send(pilot, "/new")
        await settle(pilot)
        await send(pilot, "hello")
        await settle(pilot)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(pilot.app.screen, SessionBrowser), "the session browser")
        await finish(pilot)

    assert snap_compare(rig.app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_help(snap_compare) -> None:
    rig = Rig(fixed_dir("snap-help"))

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await pilot.press("f1")
        await finish(pilot)

    assert snap_compare(rig.app, terminal_size=(100, 40), run_before=run_before)


def test_snapshot_conversation_light_theme(snap_compare) -> None:
    rig = Rig(fixed_dir("snap-light"), ["Saved. Run `pytest -q` to check.<|end|>"])

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await pilot.press("ctrl+t")
        await send(pilot, "/resume")
        await pilot.press("escape")
        await send(pilot, "save it")
        await finish(pilot)

    assert snap_compare(rig.app, terminal_size=(100, 16), run_before=run_before)
