"""The hybrid-agent terminal app: conversation, input, status bar; everything else is composed in.

`run_app(factory_or_options)` is the entry point the CLI calls. The agent's model work runs on its
one model thread (agent/owner.py, through tui/bridge.py); a turn is a Textual worker that consumes the
agent's events and draws them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, ClassVar

from hybrid_agent.tui.base import AgentFactory
from hybrid_agent.tui.bridge import error_text
from hybrid_agent.tui.palette import AgentCommands
from hybrid_agent.tui.plan_actions import PlanActions
from hybrid_agent.tui.screens.help import HelpScreen
from hybrid_agent.tui.screens.trust import TrustScreen
from hybrid_agent.tui.session_actions import SessionActions
from hybrid_agent.tui.slash import is_slash_command
from hybrid_agent.tui.turns import TurnActions
from hybrid_agent.tui.widgets.conversation import Conversation
from hybrid_agent.tui.widgets.loading import LoadingPanel
from hybrid_agent.tui.widgets.prompt_input import PromptArea, PromptInput
from hybrid_agent.tui.widgets.status_bar import MODES, StatusBar
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Header


class HybridAgentApp(TurnActions, SessionActions, PlanActions):
    CSS_PATH: ClassVar[list[str | PurePath]] = ["app.tcss", "screens.tcss"]
    TITLE = "hybrid-agent"
    COMMANDS = App.COMMANDS | {AgentCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "cancel_turn", "cancel turn", priority=True),
        Binding("escape", "cancel_turn", "cancel turn", show=False),
        Binding("shift+tab", "cycle_mode", "approval mode", priority=True),
        Binding("ctrl+g", "accept_plan", "accept the plan"),
        Binding("ctrl+o", "sessions", "sessions"),
        Binding("ctrl+n", "new_session", "new session"),
        Binding("ctrl+y", "copy_answer", "copy last answer"),
        Binding("ctrl+t", "toggle_dark", "light / dark"),
        Binding("f1", "help", "help"),
        Binding("ctrl+p", "command_palette", "commands"),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    trust_question: Any = None  # asked before the agent starts (agent/config_commands.py), or None
    # The weights' read started with the options (agent/factory.py ModelPreload), or None; stopped by
    # run_app once the app exits, if no agent took it.
    preload: Any = None

    def factory_of(self, options: Mapping[str, Any]) -> AgentFactory:
        """The agent factory for `Agent.open` options (those a trusted folder's settings give); it takes
        the read already started, if it is that model's."""
        return factory_of(options, self.preload)

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield Conversation(max_widgets=self.max_widgets, id="conversation")
        yield PromptInput(id="input")
        yield StatusBar(id="status")

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
        if self.trust_question is not None:
            await self.ask_trust(self.trust_question)
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
        self.refresh_session_status()
        await self.refresh_session_title()
        if failed := len(getattr(getattr(agent, "registry", None), "plugin_errors", ())):
            self.notify(f"{failed} tool plugin(s) failed to load; /tools names them", severity="warning")
        if self._queued:
            self.run_turn("\n\n".join(self._queued))
            self._queued.clear()
        elif self.pick_session:
            self.action_sessions()

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

    # --- actions ---------------------------------------------------------------------------------
    def action_cycle_mode(self) -> None:
        bar = self.query_one(StatusBar)
        mode = MODES[(MODES.index(bar.mode) + 1) % len(MODES)] if bar.mode in MODES else MODES[0]
        if self.bridge.agent is not None:
            self.bridge.agent.mode = (
                mode  # read at the next tool call; recorded in the session (agent/plan.py)
            )
        bar.mode = mode

    async def ask_trust(self, question: Any) -> None:
        """Ask "Trust this folder?" (tui/screens/trust.py); yes: the agent opens with its settings."""
        if await self.push_screen_wait(TrustScreen(question)):
            try:
                self.agent_factory = self.factory_of(await asyncio.to_thread(question.accept))
            except Exception as exc:  # the trust file cannot be written, or the settings fail: go on without
                title = "could not apply the folder's settings"
                self.notify(error_text(exc), title=title, severity="error", timeout=15)
            else:
                self.notify(f"{question.folder} is trusted: its settings apply")
        else:
            self.notify(
                "the folder's hooks, MCP servers, allow rules and sandbox relaxations are ignored "
                "this session (`hybrid-agent trust` applies them)",
                severity="warning",
                timeout=10,
            )

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


def factory_of(options: Mapping[str, Any], preload: Any = None) -> AgentFactory:
    """The agent factory for the keyword options of `Agent.open`. `preload`: the weights being read
    since the options were known (agent/factory.py `ModelPreload`), handed to the first agent opened;
    `Agent.open` takes it if it is that agent's model and device, else stops it and reads its own."""
    options = dict(options)
    held = [preload]

    def factory(approval: Any) -> Any:
        from hybrid_agent.agent import Agent

        taken, held[0] = held[0], None
        return Agent.open(**options, approval=approval, preload=taken)

    return factory


def run_app(
    agent_factory_or_options: AgentFactory | Mapping[str, Any] | argparse.Namespace,
    *,
    trust: Any = None,
    pick_session: bool = False,
    preload: Any = None,
) -> int:
    """Open the TUI. Either a factory `f(approval=...) -> Agent`, or the keyword options of
    `Agent.open` (a mapping, or the CLI's argparse namespace with the same names). `trust`: a
    TrustQuestion (agent/config_commands.py) to ask before the agent starts, or None; `pick_session`
    opens the session picker once the agent is loaded; `preload`: the weights' read the caller
    started (agent/factory.py `ModelPreload`), which the options' agent takes, or None."""
    if callable(agent_factory_or_options):
        factory = agent_factory_or_options
    else:
        given = agent_factory_or_options
        factory = factory_of(vars(given) if isinstance(given, argparse.Namespace) else given, preload)
    app = HybridAgentApp(factory, pick_session=pick_session)
    app.trust_question = trust
    app.preload = preload
    try:
        return int(app.run() or 0)
    finally:
        if preload is not None:  # taken, or stopped at the app's exit; else stopped here
            preload.discard()
