"""The state the parts of the terminal app share.

`HybridAgentApp` (tui/app.py) is this base plus its mixins, tui/turns.py and tui/session_actions.py.
The mixins subclass this base, so they import it and never the app: tui/ has no import cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hybrid_agent.agent.events import ApprovalDecision, ToolCallRequested, TurnEnd
from hybrid_agent.agent.mentions import workspace_paths
from hybrid_agent.agent.usage import git_status, usage_of
from hybrid_agent.tui.bridge import AgentBridge
from hybrid_agent.tui.widgets.conversation import DEFAULT_MAX_WIDGETS, Conversation
from hybrid_agent.tui.widgets.prompt_input import PromptArea
from hybrid_agent.tui.widgets.status_bar import StatusBar, StatusInfo
from hybrid_agent.tui.widgets.tool_card import ToolCard
from textual.app import App
from textual.css.query import NoMatches

AgentFactory = Callable[..., Any]  # factory(approval=callback) -> Agent


class AppBase(App[int]):
    def __init__(
        self,
        agent_factory: AgentFactory,
        *,
        max_widgets: int = DEFAULT_MAX_WIDGETS,
        clock: Callable[[], datetime] | None = None,
        system_clipboard: bool = True,
        cursor_blink: bool = True,
        pick_session: bool = False,
    ) -> None:
        super().__init__()
        self.agent_factory = agent_factory
        self.bridge = AgentBridge(self.ask_user)
        self.max_widgets = max_widgets
        self.clock = clock  # a fixed clock makes the session browser deterministic in snapshots
        self.system_clipboard = system_clipboard
        self.cursor_blink = cursor_blink
        self.pick_session = pick_session  # `--resume` without an id: the session picker opens at start
        self.status_info = StatusInfo()
        self.last_answer = ""  # for /copy
        self._cards: dict[str, ToolCard] = {}
        self._approval: asyncio.Future[ApprovalDecision] | None = None
        self._quitting = False
        self._queued: list[str] = []  # messages typed while the model was still loading

    if TYPE_CHECKING:  # defined by the mixins and the app, called across them

        async def ask_user(self, call: ToolCallRequested) -> ApprovalDecision: ...  # tui/turns.py
        async def refresh_session_title(self) -> None: ...  # tui/session_actions.py
        def run_turn(self, text: str) -> Any: ...  # tui/turns.py
        async def show_plan(self, event: TurnEnd) -> None: ...  # tui/plan_actions.py
        def plan_superseded(self) -> None: ...  # tui/plan_actions.py
        def action_help(self) -> None: ...  # tui/app.py
        async def action_quit(self) -> None: ...  # tui/app.py

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    async def refresh_usage(self) -> None:
        """What the session uses (agent/usage.py, read on the agent's model thread: it asks the
        database), the workspace's git state (a `git` subprocess with a short timeout, in a thread)
        and its paths for @ completion. Run after a turn and when the session changes, never per
        keystroke."""
        agent = self.bridge.agent
        if agent is None or self.bridge.turn_running:
            return
        try:
            usage = await self.bridge.call(usage_of, agent)
        except Exception:  # usage is not worth an error message; the next turn tries again
            return
        git = await asyncio.to_thread(git_status, agent.workspace)
        with contextlib.suppress(Exception):  # the files @ completes (a walk: a thread of its own)
            paths = await asyncio.to_thread(workspace_paths, agent.registry.workspace)
            self.query_one(PromptArea).paths = paths
        self.refresh_status(
            cache_bytes=usage.cache_bytes,
            cache_limit_bytes=usage.cache_limit_bytes,
            snapshot_bytes=usage.snapshot_bytes,
            prefill_tokens_per_s=usage.prefill_tokens_per_s,
            tokens_per_s=usage.decode_tokens_per_s,
            session_s=usage.session_s,
            git=None if git is None else str(git),
        )

    def refresh_status(self, **changes: Any) -> None:
        agent = self.bridge.agent
        if agent is not None:
            changes = {
                "model": str(getattr(agent, "model_name", "—")),
                "device": str(getattr(agent, "device", "—")),
                "state_tokens": int(getattr(agent, "state_tokens", 0)),
                "state_bytes": int(getattr(agent, "state_bytes", 0)),
                "window": getattr(agent, "window", None),
                **changes,
            }
        self.status_info = self.status_info.with_(**changes)
        with contextlib.suppress(NoMatches):  # the bar is gone while the app shuts down
            self.query_one(StatusBar).info = self.status_info
