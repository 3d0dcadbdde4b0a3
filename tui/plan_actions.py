"""Plan mode in the UI (agent/plan.py): a plan-mode turn's answer is a plan, shown with an "Accept plan"
action (a button under it, and ctrl+g) that switches back to the approval mode used before plan mode
and sends the message asking the model to carry the plan out, in the same session. A part of
`HybridAgentApp` (tui/app.py)."""

from __future__ import annotations

import contextlib

from hybrid_agent.agent.events import TurnEnd
from hybrid_agent.tui.base import AppBase
from hybrid_agent.tui.widgets.plan_card import PlanCard
from hybrid_agent.tui.widgets.status_bar import StatusBar
from textual.css.query import NoMatches


class PlanActions(AppBase):
    _plan_card: PlanCard | None = None  # the plan that can be accepted now, if any

    async def show_plan(self, event: TurnEnd) -> None:
        """Offer the plan a plan-mode turn ended with."""
        agent = self.bridge.agent
        self._close_plan("a newer plan follows")
        self._plan_card = PlanCard(getattr(agent, "mode_before_plan", "ask"))
        await self.conversation.add(self._plan_card)

    def _close_plan(self, why: str) -> None:
        card, self._plan_card = self._plan_card, None
        if card is not None:
            with contextlib.suppress(NoMatches):
                card.close(why)

    def plan_superseded(self) -> None:
        """A new turn starts: the plan on screen can no longer be accepted with one key."""
        self._close_plan("not accepted: the conversation went on")

    def action_accept_plan(self) -> None:
        agent = self.bridge.agent
        if self._plan_card is None or agent is None:
            self.notify("no plan to accept: in plan mode (shift+tab), the model's answer is a plan")
            return
        if self.bridge.turn_running:
            self.notify("a turn is running; esc cancels it", severity="warning")
            return
        message = agent.accept_plan()  # the mode before plan mode; the change is recorded
        with contextlib.suppress(NoMatches):
            self.query_one(StatusBar).mode = agent.mode
        self._close_plan(f"✔ plan accepted: {agent.mode} mode")
        self.run_turn(message)
