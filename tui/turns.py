"""A turn on screen: the user's message, the streamed answer, tool cards, the approval prompt, the
status bar at the end; and cancelling it. A part of `HybridAgentApp` (tui/app.py).

The agent's events arrive in batches from the running turn (tui/bridge.py); consecutive text deltas of
a batch become one Markdown append, so a fast model costs one re-render per batch, not per token.
"""

from __future__ import annotations

import asyncio

from hybrid_agent.agent.events import (
    AgentEvent,
    ApprovalDecision,
    ErrorEvent,
    HookNotice,
    MentionNotice,
    PrefillProgress,
    TextDelta,
    ToolCallRequested,
    ToolResultEvent,
    TurnEnd,
)
from hybrid_agent.tui.base import AppBase
from hybrid_agent.tui.screens.approval import ApprovalScreen
from hybrid_agent.tui.widgets.messages import AssistantMessage
from textual import work

WAITING_TITLE = "⏸ waiting for you — hybrid-agent"


class TurnActions(AppBase):
    # --- a turn ----------------------------------------------------------------------------------
    @work(group="turn", exclusive=True)
    async def run_turn(self, text: str) -> None:
        conversation = self.conversation
        self.plan_superseded()
        await conversation.add_user(text)
        self.refresh_status(busy="thinking")
        answer: list[str] = []
        message: AssistantMessage | None = None
        try:
            async for batch in self.bridge.stream(text):
                for event in _join_text(batch):
                    if isinstance(event, TextDelta):
                        if message is None:
                            message = await conversation.add_assistant()
                        await message.append_text(event.text)
                        answer.append(event.text)
                        continue
                    if message is not None:  # text after a tool call is a new block below its card
                        await message.finish()
                        message = None
                    await self._show_event(event)
        finally:
            if message is not None:
                await message.finish()
            if answer:
                self.last_answer = "".join(answer)
            if self.status_info.busy:
                self.refresh_status(busy=None)
            if not self._quitting:  # the turn's speeds, the snapshot's bytes, what it did to git
                self.run_worker(self.refresh_usage(), group="usage", exclusive=True)

    async def _show_event(self, event: AgentEvent) -> None:
        if isinstance(event, PrefillProgress):  # a long message or tool output is being read
            # Late in a batch, it must not cover what came since (an approval question, a cancel).
            if self.status_info.busy == "thinking" or (self.status_info.busy or "").startswith("reading"):
                self.refresh_status(busy=_reading(event) if event.tokens < event.total else "thinking")
        elif isinstance(event, ToolCallRequested):
            card = await self.conversation.add_tool_call(event)
            card.set_status("waiting" if event.needs_approval else "running")
            self._cards[event.call_id] = card
        elif isinstance(event, ToolResultEvent):
            if (card := self._cards.pop(event.call_id, None)) is not None:
                card.set_result(event)
        elif isinstance(event, TurnEnd):
            self.refresh_status(
                busy=None,
                saved_turn=event.turn if event.saved else self.status_info.saved_turn,
                state_tokens=event.state_tokens,
                state_bytes=event.state_bytes,
                window=event.window,
                tokens_per_s=event.tokens_per_s,
            )
            if event.forked_from:
                await self.conversation.add_notice(event.fork_notice())
                self.notify(event.fork_notice(), severity="warning", timeout=10)
            if (event.turn == 1 and event.saved) or event.forked_from:  # named, or another session
                await self.refresh_session_title()
            if event.plan is not None:  # a plan-mode turn: its answer is a plan to accept (agent/plan.py)
                await self.show_plan(event)
            if event.stop_reason == "cancelled":
                await self.conversation.add_notice("cancelled: the session stays at its last snapshot")
            elif event.stop_reason != "end_of_turn":
                await self.conversation.add_notice(f"turn stopped: {event.stop_reason.replace('_', ' ')}")
        elif isinstance(event, MentionNotice):  # an @path of the message (agent/mentions.py)
            await self.conversation.add_notice(event.message, error=not event.attached)
        elif isinstance(event, HookNotice):
            if event.message:  # a hook failed, timed out or blocked (agent/hooks.py)
                await self.conversation.add_notice(event.message, error=event.blocked)
        elif isinstance(event, ErrorEvent):
            await self.conversation.add_notice(event.message, error=True)
            self.notify(event.message, severity="error", timeout=8)

    # --- approval (awaited by the running turn, on the UI loop) ----------------------------------
    async def ask_user(self, call: ToolCallRequested) -> ApprovalDecision:
        if self._quitting:
            return ApprovalDecision(allow=False, reason="the user is quitting")
        self._approval = future = asyncio.get_running_loop().create_future()
        self._set_waiting(True)
        self.push_screen(ApprovalScreen(call), lambda d: future.done() or future.set_result(d))
        try:
            decision = await future
        finally:
            self._approval = None
            self._set_waiting(False)
        if (card := self._cards.get(call.call_id)) is not None:
            card.set_status("running" if decision.allow else "denied")
        return decision

    def _set_waiting(self, waiting: bool) -> None:
        """Bell and title: the user may be in another window while a tool waits for them."""
        if not self.is_running:  # shutting down: nothing left to draw on
            return
        self.title = WAITING_TITLE if waiting else self.TITLE
        if waiting:
            self.bell()
        if not self.is_headless and self._driver is not None:
            self._driver.write(f"\x1b]2;{self.title}\x07")  # the terminal's own window title
        self.refresh_status(busy="waiting for approval" if waiting else "thinking")

    def action_cancel_turn(self) -> None:
        # An open approval is answered even when no turn worker is left (at shutdown the workers are
        # cancelled first): the agent is waiting on that answer and must not wait forever.
        if self._approval is not None and not self._approval.done():
            self._approval.set_result(ApprovalDecision(allow=False, reason="the turn was cancelled"))
            stack = self.screen_stack  # empty while the app is shutting down
            if len(stack) > 1 and isinstance(stack[-1], ApprovalScreen):
                self.pop_screen()
        if not self.bridge.turn_running:
            return
        self.bridge.cancel()
        self.refresh_status(busy="cancelling")


def _reading(event: PrefillProgress) -> str:
    percent = 100 * event.tokens // max(event.total, 1)
    return f"reading {event.tokens:,}/{event.total:,} tok ({percent}%, {event.tokens_per_s:,.0f} tok/s)"


def _join_text(batch: list[AgentEvent]) -> list[AgentEvent]:
    """Consecutive text deltas become one: one Markdown append per batch instead of one per token."""
    out: list[AgentEvent] = []
    for event in batch:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(text=out[-1].text + event.text)
        else:
            out.append(event)
    return out
