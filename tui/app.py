"""The hybrid-agent terminal app: conversation, input, status bar; everything else is composed in.

`run_app(factory_or_options)` is the entry point the CLI calls. The agent lives on its own thread
(tui/bridge.py); a turn is a Textual worker that consumes the agent's events and draws them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import PurePath
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import Header

from agent.events import (
    AgentEvent,
    ApprovalDecision,
    ErrorEvent,
    TextDelta,
    ToolCallRequested,
    ToolResultEvent,
    TurnEnd,
)
from tui.bridge import AgentBridge, error_text
from tui.palette import AgentCommands
from tui.screens.approval import ApprovalScreen
from tui.screens.help import HelpScreen
from tui.session_actions import SessionActions
from tui.slash import is_slash_command
from tui.widgets.conversation import DEFAULT_MAX_WIDGETS, Conversation
from tui.widgets.loading import LoadingPanel
from tui.widgets.messages import AssistantMessage
from tui.widgets.prompt_input import PromptArea, PromptInput
from tui.widgets.status_bar import MODES, StatusBar, StatusInfo
from tui.widgets.tool_card import ToolCard

AgentFactory = Callable[..., Any]  # factory(approval=callback) -> Agent
WAITING_TITLE = "⏸ waiting for you — hybrid-agent"


class HybridAgentApp(SessionActions, App[int]):
    CSS_PATH: ClassVar[list[str | PurePath]] = ["app.tcss", "screens.tcss"]
    TITLE = "hybrid-agent"
    COMMANDS = App.COMMANDS | {AgentCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "cancel_turn", "cancel turn", priority=True),
        Binding("escape", "cancel_turn", "cancel turn", show=False),
        Binding("shift+tab", "cycle_mode", "approval mode", priority=True),
        Binding("ctrl+o", "sessions", "sessions"),
        Binding("ctrl+n", "new_session", "new session"),
        Binding("ctrl+y", "copy_answer", "copy last answer"),
        Binding("ctrl+t", "toggle_dark", "light / dark"),
        Binding("f1", "help", "help"),
        Binding("ctrl+p", "command_palette", "commands"),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    def __init__(
        self,
        agent_factory: AgentFactory,
        *,
        max_widgets: int = DEFAULT_MAX_WIDGETS,
        clock: Callable[[], datetime] | None = None,
        system_clipboard: bool = True,
        cursor_blink: bool = True,
    ) -> None:
        super().__init__()
        self.agent_factory = agent_factory
        self.bridge = AgentBridge(self.ask_user)
        self.max_widgets = max_widgets
        self.clock = clock  # a fixed clock makes the session browser deterministic in snapshots
        self.system_clipboard = system_clipboard
        self.cursor_blink = cursor_blink
        self.status_info = StatusInfo()
        self.last_answer = ""  # for /copy
        self._cards: dict[str, ToolCard] = {}
        self._approval: asyncio.Future[ApprovalDecision] | None = None
        self._quitting = False
        self._queued: list[str] = []  # messages typed while the model was still loading

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield Conversation(max_widgets=self.max_widgets, id="conversation")
        yield PromptInput(id="input")
        yield StatusBar(id="status")

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    async def on_mount(self) -> None:
        area = self.query_one(PromptArea)
        area.cursor_blink = self.cursor_blink
        area.focus()
        self.bridge.start()
        await self.conversation.add(LoadingPanel())  # mounted before the loader can report to it
        self.load_agent()

    async def on_unmount(self) -> None:
        # However the app ends (quit, a crash elsewhere, a test leaving run_test), stop the turn and
        # close the agent: it rolls a half-done turn back to the last snapshot and closes the store.
        self.action_cancel_turn()
        await self.bridge.close()

    # --- loading ---------------------------------------------------------------------------------
    @work(group="load")
    async def load_agent(self) -> None:
        try:
            agent = await self.bridge.open(self.agent_factory)
        except Exception as exc:  # a bad model path or database: say so, keep the app alive to quit
            message = error_text(exc)
            self.query_one(LoadingPanel).failed(message)
            self.notify(message, title="could not start", severity="error", timeout=30)
            return
        await self.query_one(LoadingPanel).remove()
        self.query_one(StatusBar).mode = getattr(agent, "mode", "ask")
        if getattr(agent, "turn", 0):  # opened on a resumed session: show where it stands
            await self._redraw()
        self.refresh_status()
        if self._queued:
            self.run_turn("\n\n".join(self._queued))
            self._queued.clear()

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

    # --- input -----------------------------------------------------------------------------------
    @on(PromptArea.Submitted)
    async def on_prompt_submitted(self, event: PromptArea.Submitted) -> None:
        if is_slash_command(event.text):
            # A worker, not an await here: resuming a big session reads its snapshot from the
            # database, and the app's message queue (keys, redraws) must keep moving meanwhile.
            self.run_worker(self.run_slash(event.text), group="command", exclusive=True)
        elif self.bridge.agent is None:
            if self.query(LoadingPanel).filter(".failed"):
                self.notify("the agent could not start; ctrl+q quits", severity="error")
            else:
                self._queued.append(event.text)
                self.notify("the model is still loading; your message goes out as soon as it is ready")
        elif self.bridge.turn_running:
            self.notify("a turn is running; esc cancels it", severity="warning")
        else:
            self.run_turn(event.text)

    # --- a turn ----------------------------------------------------------------------------------
    @work(group="turn", exclusive=True)
    async def run_turn(self, text: str) -> None:
        conversation = self.conversation
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

    async def _show_event(self, event: AgentEvent) -> None:
        if isinstance(event, ToolCallRequested):
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
            if event.stop_reason == "cancelled":
                await self.conversation.add_notice("cancelled: the session stays at its last snapshot")
            elif event.stop_reason != "end_of_turn":
                await self.conversation.add_notice(f"turn stopped: {event.stop_reason.replace('_', ' ')}")
        elif isinstance(event, ErrorEvent):
            await self.conversation.add_notice(event.message, error=True)
            self.notify(event.message, severity="error", timeout=8)

    # --- approval (called by the agent through the bridge, runs on the UI loop) ------------------
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

    # --- actions ---------------------------------------------------------------------------------
    def action_cancel_turn(self) -> None:
        if not self.bridge.turn_running:
            return
        self.bridge.cancel()
        if self._approval is not None and not self._approval.done():
            self._approval.set_result(ApprovalDecision(allow=False, reason="the turn was cancelled"))
            stack = self.screen_stack  # empty while the app is shutting down
            if stack and isinstance(stack[-1], ApprovalScreen):
                self.pop_screen()
        self.refresh_status(busy="cancelling")

    def action_cycle_mode(self) -> None:
        bar = self.query_one(StatusBar)
        mode = MODES[(MODES.index(bar.mode) + 1) % len(MODES)] if bar.mode in MODES else MODES[0]
        if self.bridge.agent is not None:
            self.bridge.agent.mode = mode  # a plain attribute: read by the agent at the next tool call
        bar.mode = mode

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.BINDINGS))

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    async def action_quit(self) -> None:
        """Stop the turn, let the agent finish it (a cancelled turn commits nothing), close, exit.
        Even if that takes too long, each snapshot is one transaction: the database stays whole."""
        self._quitting = True
        if self.bridge.turn_running:
            self.action_cancel_turn()
            for worker in self.workers:
                if worker.group == "turn":
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(worker.wait(), 10)
        await self.bridge.close()
        self.exit(0)


def _join_text(batch: list[AgentEvent]) -> list[AgentEvent]:
    """Consecutive text deltas become one: one Markdown append per batch instead of one per token."""
    out: list[AgentEvent] = []
    for event in batch:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(text=out[-1].text + event.text)
        else:
            out.append(event)
    return out


def run_app(agent_factory_or_options: AgentFactory | Mapping[str, Any] | argparse.Namespace) -> int:
    """Open the TUI. Either a factory `f(approval=...) -> Agent`, or the keyword options of
    `Agent.open` (a mapping, or the CLI's argparse namespace with the same names)."""
    if callable(agent_factory_or_options):
        factory = agent_factory_or_options
    else:
        given = agent_factory_or_options
        options = dict(vars(given) if isinstance(given, argparse.Namespace) else given)

        def factory(approval: Any) -> Any:
            from agent import Agent

            return Agent.open(**options, approval=approval)

    result = HybridAgentApp(factory).run()
    return int(result or 0)
