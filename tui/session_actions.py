"""What the slash commands, the palette and the session browser do to the agent.

A part of `HybridAgentApp` (tui/app.py): each action runs the agent call on the agent's model thread
(through the bridge, tui/bridge.py), redraws what changed, and reports failures as notifications,
never as a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hybrid_agent.agent.project_memory import MEMORY_FILE
from hybrid_agent.agent.project_memory import describe as describe_memory
from hybrid_agent.agent.usage import describe, git_status, usage_of
from hybrid_agent.memory import SessionNotFoundError
from hybrid_agent.tui.base import AppBase
from hybrid_agent.tui.bridge import error_text
from hybrid_agent.tui.clipboard import copy_to_system_clipboard
from hybrid_agent.tui.history import redraw
from hybrid_agent.tui.screens.sessions import BrowserChoice, SessionBrowser
from hybrid_agent.tui.slash import ParsedCommand, SlashCommandError, parse
from hybrid_agent.tui.widgets.diff_view import DiffView
from textual import work


class SessionActions(AppBase):
    # --- slash commands -------------------------------------------------------------------------
    async def run_slash(self, text: str) -> None:
        try:
            cmd = parse(text)
        except SlashCommandError as exc:
            self.notify(str(exc), severity="warning")
            return
        await self.dispatch_command(cmd)

    async def dispatch_command(self, cmd: ParsedCommand) -> None:
        a = cmd.args
        if cmd.name == "new":
            await self.action_new_session()
        elif cmd.name == "resume":
            if a:
                await self.resume_by_prefix(a[0])
            else:
                self.action_sessions()
        elif cmd.name == "fork":
            await self.action_fork(int(a[0]) if a else None)
        elif cmd.name == "rewind":
            await self.rewind(int(a[0]), revert_files="files" in a[1:])
        elif cmd.name == "undo":
            await self.action_undo()
        elif cmd.name == "diff":
            await self.action_diff(int(a[0]) if a else None)
        elif cmd.name == "tools":
            await self.action_tools()
        elif cmd.name == "model":
            await self.action_model_info()
        elif cmd.name == "status":
            await self.action_usage()
        elif cmd.name == "memory":
            await (self.reload_memory() if a else self.action_memory())
        elif cmd.name == "copy":
            self.action_copy_answer()
        elif cmd.name == "help":
            self.action_help()
        elif cmd.name == "quit":
            await self.action_quit()

    async def _agent(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call the agent on its model thread; on failure say so and return (False, None)."""
        if self.bridge.agent is None:
            self.notify("the model is not loaded yet", severity="warning")
            return False, None
        if self.bridge.turn_running:
            self.notify(f"cannot {what} while a turn is running (esc cancels it)", severity="warning")
            return False, None
        try:
            return True, await self.bridge.call(fn, *args, **kwargs)
        except Exception as exc:
            self.notify(f"could not {what}: {error_text(exc)}", severity="error", timeout=8)
            return False, None

    async def refresh_session_title(self) -> None:
        """The open session's title in the header (the agent names a session after its first message)."""
        agent = self.bridge.agent
        if agent is None:
            return
        try:
            info = await self.bridge.call(lambda: agent.store.get_session(agent.session_id))
        except SessionNotFoundError:  # a new session is written with its first turn or file change
            self.sub_title = "new session"
            return
        except Exception:  # a title is not worth an error message
            return
        self.sub_title = info.title or "new session"

    async def _redraw(self) -> None:
        ok, events = await self._agent("load the history", lambda: self.bridge.agent.history())
        if ok:
            await redraw(self.conversation, events, tail=self.conversation.max_widgets)
        self.refresh_session_status()
        await self.refresh_session_title()

    def refresh_session_status(self) -> None:
        """The status bar for the session now open (after a resume, fork, rewind or new session): its
        own saved turn, and the speeds its own last turn recorded (the last one run may be another
        session's)."""
        agent = self.bridge.agent
        turn = int(getattr(agent, "turn", 0) or 0) if agent is not None else 0
        self.refresh_status(saved_turn=turn or None, tokens_per_s=None, prefill_tokens_per_s=None)
        self.run_worker(self.refresh_usage(), group="usage", exclusive=True)  # its own last turn's
        self.run_worker(self.check_memory(), group="memory", exclusive=True)

    # --- sessions -------------------------------------------------------------------------------
    async def action_new_session(self) -> None:
        ok, _ = await self._agent("start a new session", lambda: self.bridge.agent.new_session())
        if ok:
            await self.conversation.clear()
            self.last_answer = ""
            self.refresh_session_status()
            await self.refresh_session_title()
            self.notify("new session")

    def action_sessions(self) -> None:
        if self.bridge.agent is None:
            self.notify("the model is not loaded yet", severity="warning")
            return
        browser = SessionBrowser(self, current_id=self.bridge.agent.session_id, clock=self.clock)
        self.push_screen(browser, self._browser_closed)

    @work(group="session")
    async def _browser_closed(self, choice: BrowserChoice | None) -> None:
        if choice is not None:
            await self.open_session(*choice)
        else:
            await self.refresh_session_title()  # it may have been renamed there

    async def open_session(self, how: str, session_id: str) -> None:
        folder = self.bridge.agent.workspace
        ok, _ = await self._agent("resume the session", lambda: self.bridge.agent.resume(session_id))
        if not ok:
            return
        if how == "fork":
            turn = self.bridge.agent.turn
            ok, _ = await self._agent("fork the session", lambda: self.bridge.agent.fork(turn))
            if not ok:
                return
        await self._redraw()
        word = "forked" if how == "fork" else "resumed"
        agent = self.bridge.agent
        moved = f"; the tools now work in {agent.workspace}" if agent.workspace != folder else ""
        self.notify(f"{word} session {agent.session_id[:8]} at turn {agent.turn}{moved}")

    async def resume_by_prefix(self, given: str) -> None:
        """`/resume ID`: the id or a unique prefix of it (the notices show the first 8 characters)."""
        from hybrid_agent.agent.session_ids import resolve_session_id

        agent = self.bridge.agent
        ok, session_id = await self._agent("find the session", lambda: resolve_session_id(agent.store, given))
        if ok:
            await self.open_session("resume", session_id)

    async def action_fork(self, turn: int | None = None) -> None:
        if self.bridge.agent is None:
            return
        at = self.bridge.agent.turn if turn is None else turn
        ok, new_id = await self._agent("fork", lambda: self.bridge.agent.fork(at))
        if ok:
            if turn is not None:
                await self._redraw()
            else:
                self.refresh_session_status()
                await self.refresh_session_title()
            self.notify(f"forked at turn {at}: now in session {str(new_id)[:8]}")

    async def rewind(self, turn: int, *, revert_files: bool) -> None:
        ok, _ = await self._agent("rewind", lambda: self.bridge.agent.rewind(turn, revert_files=revert_files))
        if ok:
            await self._redraw()
            files = " and reverted the files" if revert_files else ""
            self.notify(f"rewound to turn {turn}{files}")

    # SessionSource for the browser: the browser never touches the agent itself.
    async def list_sessions(self) -> Sequence[Any]:
        return await self.bridge.call(lambda: self.bridge.agent.sessions())  # type: ignore[no-any-return]

    async def rename_session(self, session_id: str, title: str) -> None:
        await self.bridge.call(lambda: self.bridge.agent.rename(session_id, title))

    async def delete_session(self, session_id: str) -> None:
        await self.bridge.call(lambda: self.bridge.agent.delete(session_id))

    # --- the rest -------------------------------------------------------------------------------
    async def action_undo(self) -> None:
        ok, what = await self._agent("undo", lambda: self.bridge.agent.undo())
        if ok:
            await self.conversation.add_notice(f"undo: {what}")

    async def action_diff(self, turn: int | None = None) -> None:
        """`/diff [N]`: the session's file changes (turn N's), one highlighted diff per file, from the
        undo journal as `hybrid-agent sessions diff` prints them."""
        from hybrid_agent.agent.session_diff import file_diff, net_changes

        journal = self.bridge.agent.registry.journal if self.bridge.agent is not None else None
        ok, changes = await self._agent("read the file changes", lambda: journal.entries())
        if not ok:
            return
        net = net_changes(changes, turn)
        what = "the session" if turn is None else f"turn {turn}"
        talk = self.conversation
        if not net:
            await talk.add_notice(f"diff: no file changes in {what} (undone changes are left out)")
            return
        await talk.add_notice(f"diff: {len(net)} file(s) changed in {what}: " + ", ".join(net))
        for path, (before, after) in net.items():
            await talk.add(DiffView(file_diff(path, before, after), path, classes="session-diff"))

    async def action_tools(self) -> None:
        ok, tools = await self._agent("list the tools", lambda: _tool_lines(self.bridge.agent))
        if ok:
            await self.conversation.add_notice("tools:\n" + "\n".join(tools))

    async def action_model_info(self) -> None:
        agent = self.bridge.agent
        if agent is None:
            return
        s = self.status_info
        await self.conversation.add_notice(
            f"model {s.model} on {s.device}; state {s.state_tokens:,} tokens, {s.state_bytes / 1e6:.1f} MB; "
            f"window {'full' if s.window is None else s.window}; "
            f"session {agent.session_id[:8]}, turn {agent.turn}"
        )

    async def action_usage(self) -> None:
        """`/status`: what the session uses, one fact a line (agent/usage.py)."""
        agent = self.bridge.agent
        ok, usage = await self._agent("measure the session", usage_of, agent)
        if ok:
            git = await asyncio.to_thread(git_status, agent.workspace)
            lines = describe(usage, None if git is None else str(git))
            await self.conversation.add_notice(f"session {agent.session_id[:8]}:\n" + "\n".join(lines))

    # --- project memory (agent/project_memory.py) ------------------------------------------------
    async def action_memory(self) -> None:
        """`/memory`: the AGENTS.md files the session read, and whether they changed since."""
        ok, status = await self._agent("read the project memory", lambda: self.bridge.agent.memory_status())
        if ok:
            await self.conversation.add_notice(f"project memory: {describe_memory(status)}")

    async def check_memory(self) -> None:
        """Say so when the open session's AGENTS.md changed since its model read it (on a resume)."""
        agent = self.bridge.agent
        if agent is None or self.bridge.turn_running:
            return
        try:
            status = await self.bridge.call(agent.memory_status)
        except Exception:  # the next look (a resume, /memory) says what is wrong
            return
        if status.changed:
            line = (
                f"{MEMORY_FILE} changed since this session read it; /memory shows it, /memory reload sends it"
            )
            await self.conversation.add_notice(line)
            self.notify(line, severity="warning", timeout=10)

    async def reload_memory(self) -> None:
        """`/memory reload`: send the new AGENTS.md text as a message, which records it as read."""
        ok, status = await self._agent("read the project memory", lambda: self.bridge.agent.memory_status())
        if not ok:
            return
        if status.loaded is None:
            self.notify(f"the session's first message reads {MEMORY_FILE} as it is now", severity="warning")
            return
        if not status.changed:
            self.notify(f"{MEMORY_FILE} has not changed since the session read it")
            return
        ok, message = await self._agent(
            "reload the project memory", lambda: self.bridge.agent.memory_reload()
        )
        if ok:
            self.run_turn(message)

    def action_copy_answer(self) -> None:
        if not self.last_answer:
            self.notify("no answer to copy yet", severity="warning")
            return
        self.copy_to_clipboard(self.last_answer)  # OSC 52: works over ssh in most terminals
        tool = copy_to_system_clipboard(self.last_answer) if self.system_clipboard else None
        self.notify(f"copied the last answer ({len(self.last_answer)} chars{f', {tool}' if tool else ''})")


def _tool_lines(agent: Any) -> list[str]:
    """One line per tool: name, where it comes from, its policy, the first line of its description;
    then one marked line per plugin that failed to load (the model does not get its tools)."""
    registry = agent.registry
    lines = []
    for name in registry.names():
        tool = registry.get(name)
        desc = (getattr(tool, "description", "") or "").strip().splitlines()
        policy = registry.policy(name)
        lines.append(f"  {name:<14} {tool.source:<12} {policy:<6} {desc[0] if desc else ''}")
    lines = lines or ["  (none)"]
    for problem in getattr(registry, "plugin_errors", []):
        lines.append(f"  ✗ not loaded: {(problem.splitlines() or [''])[0]}")
    return lines
