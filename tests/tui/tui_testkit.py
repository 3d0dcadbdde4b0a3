"""Build the app around a REAL `Agent`: real SQLite `Store`, real `ToolRegistry` over a real
workspace, and the scripted engine the agent tests use (tests/agent/conftest.py), which decodes
replies chosen by the test one token at a time instead of running a model.

The scripted engine is loaded from that file by path (test directories are not packages under
--import-mode=importlib), so both suites test against the same engine.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hybrid_agent.agent.loop import Agent
from hybrid_agent.memory import Store
from hybrid_agent.tui.app import HybridAgentApp
from hybrid_agent.tui.widgets.loading import LoadingPanel
from hybrid_agent.tui.widgets.prompt_input import PromptArea
from textual.worker import WorkerState


def _load_scripted_engine() -> type:
    path = Path(__file__).parents[1] / "agent" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tui_agent_scripted_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScriptedEngine  # type: ignore[no-any-return]


ScriptedEngine = _load_scripted_engine()


def tool_call(name: str, **arguments: Any) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def fixed_dir(name: str) -> Path:
    """A directory at a fixed path (snapshots show the workspace path, so it must not vary)."""
    path = Path(tempfile.gettempdir()) / "hybrid-agent-tui-tests" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


class Rig:
    """One app + agent + store + workspace; `replies` are what the scripted model says, in order."""

    def __init__(
        self,
        root: Path,
        replies: Sequence[str] = (),
        *,
        tools: bool = True,
        resume: str | None = None,
        **app_kw: Any,
    ) -> None:
        self.root = root
        self.workspace = root / "project"
        self.workspace.mkdir(exist_ok=True)
        if not (self.workspace / "hello.py").exists():
            (self.workspace / "hello.py").write_text('def main():\n    print("hello")\n    return 0\n')
        self.db_url = f"sqlite:///{root / 'sessions.db'}"
        self.engine = ScriptedEngine(list(replies))
        self.agent: Agent | None = None
        self.tools = tools
        self.resume = resume
        app_kw.setdefault("cursor_blink", False)
        app_kw.setdefault("system_clipboard", False)
        self.app = HybridAgentApp(self.factory, **app_kw)

    def factory(self, approval: Any) -> Agent:
        self.agent = Agent(
            self.engine,
            Store(self.db_url),
            workspace=self.workspace,
            approval=approval,
            session_id=self.resume,
        )
        if not self.tools:
            # No tool schemas in the system segment: token counts then do not move whenever a tool's
            # description is edited (the session browser snapshot shows them).
            for name in self.agent.registry.names():
                self.agent.registry.unregister(name)
        return self.agent

    def hold_until_cancelled(self, after: int = 20) -> None:
        """From the next turn on, the scripted model writes `after` tokens, then waits until the agent
        is cancelled (by a key, or by quitting): such a turn cannot end on its own before the UI has
        handled the key, however slow the machine."""
        assert self.agent is not None, "after ready(): the agent is made when the app starts"
        cancelled = threading.Event()
        cancel = self.agent.cancel
        self.agent.cancel = lambda: (cancel(), cancelled.set())  # type: ignore[method-assign]
        decoded = itertools.count()
        self.engine.step_hook = lambda n: next(decoded) >= after and cancelled.wait(60)

    def say(self, *replies: str) -> None:
        """Queue more replies of the scripted model."""
        self.engine.replies.extend(replies)

    def store(self) -> Store:
        """A second connection to the same database, to check what was committed."""
        return Store(self.db_url)


async def until(pilot: Any, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition instead of a fixed time: the machine may be slow or busy."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)


async def ready(pilot: Any) -> None:
    """The agent is loaded and the loading screen is gone."""
    app = pilot.app
    await until(
        pilot, lambda: app.bridge.agent is not None and not app.query(LoadingPanel), "the agent to load"
    )


def _busy(app: Any) -> bool:
    return app.bridge.turn_running or any(
        w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers
    )


async def send(pilot: Any, text: str) -> None:
    await ready(pilot)
    pilot.app.query_one(PromptArea).load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def settle(pilot: Any) -> None:
    """Everything the last input started (turn, command, worker) has finished and been drawn."""
    await pilot.pause()
    await until(pilot, lambda: not _busy(pilot.app), "the app to become idle")
    await pilot.pause()
