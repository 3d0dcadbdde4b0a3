"""`hybrid-agent acp`: editors drive the agent through the Agent Client Protocol (protocol version 1),
JSON-RPC over stdio, on the official `acp` SDK's connection (agent/acp_transport.py reads the lines).

- Each ACP session is one `Agent` (agent/loop.py) on its own engine state, all of them on one model
  thread (agent/owner.py) and one set of weights (agent/acp_commands.py opens them). The session id
  is the store's: `hybrid-agent sessions list` shows it once its first turn is saved, and
  `session/load` in a later process resumes it from its last snapshot, exactly.
- `session/prompt` runs one turn and streams it as `session/update`s (agent/acp_updates.py); the
  answer comes after every tool call the turn announced has ended. A turn's failure is a JSON-RPC
  error; the session stays at its last snapshot.
- `session/cancel` sets the turn's cancel: a turn that has not started yet does not start, a running
  one stops at its next token or tool call, a pending permission request is given up (denied).
- Tools whose policy asks are asked about with `session/request_permission`; "always" answers stick
  as in the terminal UI (agent/permissions.py's `remembering`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from acp import PROTOCOL_VERSION, RequestError
from acp import helpers as h
from acp.schema import (
    AgentCapabilities,
    ClientCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    McpCapabilities,
    NewSessionResponse,
    PromptCapabilities,
    PromptResponse,
)
from hybrid_agent.agent import acp_updates as up
from hybrid_agent.agent.acp_tools import ClientFiles
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.events import (
    ApprovalDecision,
    ErrorEvent,
    HookNotice,
    TextDelta,
    ToolCallRequested,
    ToolResultEvent,
    TurnEnd,
)

from hybrid_agent import __version__

log = logging.getLogger("hybrid_agent.acp")
_EDITS = ("write_file", "edit_file")
_DIFF_MAX_BYTES = 8 << 20


class SessionOpener(Protocol):
    """Builds the agent of one ACP session (agent/acp_commands.py's, over the command line)."""

    def open(
        self,
        workspace: Path,
        resume: str | None,
        mcp_servers: dict[str, dict[str, Any]],
        approval: Any,
        files: ClientFiles | None,
    ) -> Any: ...

    def close(self) -> None: ...


def _invalid(message: str) -> RequestError:
    return RequestError(-32602, message)


def _user_errors() -> tuple[type[BaseException], ...]:
    from hybrid_agent.agent.loop import USER_ERRORS

    return (*USER_ERRORS, OSError)


@dataclass
class _Run:
    """One `session/prompt` in progress."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Tool calls announced and not ended yet: call id -> (absolute path, (old text, new text) or None).
    open: dict[str, tuple[str | None, Any]] = field(default_factory=dict)
    plans: set[str] = field(default_factory=set)


@dataclass
class _Session:
    id: str = ""
    agent: Any = None
    run: _Run | None = None


class AcpServer:
    """The ACP agent side (the SDK's `acp.Agent` protocol) over our `Agent`s."""

    def __init__(self, opener: SessionOpener) -> None:
        self.opener = opener
        self.conn: Any = None
        self.client = ClientCapabilities()
        self.sessions: dict[str, _Session] = {}

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    # ---- set-up ----------------------------------------------------------------------------------------
    async def initialize(
        self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None, **_: Any
    ) -> InitializeResponse:
        self.client = client_capabilities or ClientCapabilities()
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(image=False, audio=False, embedded_context=True),
                mcp_capabilities=McpCapabilities(http=True, sse=False),
            ),
            agent_info=Implementation(name="hybrid-agent", title="hybrid-agent", version=__version__),
        )

    async def authenticate(self, method_id: str, **_: Any) -> None:
        return None

    async def new_session(
        self, cwd: str, mcp_servers: list[Any] | None = None, **_: Any
    ) -> NewSessionResponse:
        session = await self._open(cwd, None, mcp_servers)
        return NewSessionResponse(session_id=session.id)

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None, **_: Any
    ) -> LoadSessionResponse:
        session = self.sessions.get(session_id)
        if session is not None and session.run is not None:
            raise _invalid(f"session {session_id} is running a prompt; cancel it first")
        if session is None:
            session = await self._open(cwd, session_id, mcp_servers)
        agent = session.agent
        events = await asyncio.to_thread(agent.store.events, agent.session_id)
        for update in up.replay(events, str(agent.workspace)):
            await self.conn.session_update(session_id=session.id, update=update)
        return LoadSessionResponse()

    async def _open(self, cwd: str, resume: str | None, mcp_servers: list[Any] | None) -> _Session:
        folder = Path(cwd)
        if not folder.is_absolute() or not folder.is_dir():
            raise _invalid(f"cwd {cwd!r} is not an absolute path to a folder")
        servers, skipped = up.mcp_entries(mcp_servers)
        for line in skipped:
            log.warning("%s", line)
        session = _Session()
        files = None
        fs = self.client.fs
        if fs is not None and fs.read_text_file:
            files = ClientFiles(
                self.conn,
                asyncio.get_running_loop(),
                "",
                read=bool(fs.read_text_file),
                write=bool(fs.write_text_file),
            )

        async def approve(request: ToolCallRequested) -> ApprovalDecision:
            return await self._approve(session, request)

        try:
            agent = await asyncio.to_thread(self.opener.open, folder, resume, servers, approve, files)
        except _user_errors() as exc:
            if resume is not None:
                raise _invalid(f"cannot load session {resume}: {exc}") from None
            raise RequestError(-32603, f"cannot start a session: {exc}") from None
        session.id, session.agent = agent.session_id, agent
        if files is not None:
            files.session_id = session.id
        for problem in agent.registry.plugin_errors:
            log.warning("%s", problem.splitlines()[0] if problem else problem)
        self.sessions[session.id] = session
        return session

    def _session(self, session_id: str) -> _Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise _invalid(f"unknown session {session_id!r}: create it with session/new or session/load")
        return session

    # ---- a prompt ----------------------------------------------------------------------------------
    async def prompt(self, prompt: list[Any], session_id: str, **_: Any) -> PromptResponse:
        session = self._session(session_id)
        if session.run is not None:
            raise _invalid(f"session {session_id} is already running a prompt; cancel it first")
        try:
            text = up.prompt_text(prompt)
        except AgentError as exc:
            raise _invalid(str(exc)) from None
        run = session.run = _Run()
        end: TurnEnd | None = None
        failed: str | None = None
        try:
            await asyncio.sleep(0)  # a cancel sent right behind the prompt is read before the turn starts
            if run.cancelled.is_set():
                return PromptResponse(stop_reason="cancelled")
            # aclosing: a failure to reach the editor mid-turn still rolls the turn back at once.
            async with contextlib.aclosing(session.agent.send(text)) as events:
                async for event in events:
                    if isinstance(event, TurnEnd):
                        end = event
                    elif isinstance(event, ErrorEvent):
                        failed = event.message
                    else:
                        await self._forward(session, run, event)
        finally:
            for call_id in list(run.open):
                why = "the turn was cancelled" if run.cancelled.is_set() else "the turn ended before it"
                with contextlib.suppress(Exception):
                    await self.conn.session_update(
                        session_id=session.id, update=up.tool_call_abandoned(call_id, why)
                    )
            session.run = None
        if failed is not None or end is None:
            raise RequestError(-32603, f"the turn failed: {failed or 'it ended without an answer'}")
        if end.forked_from:
            log.warning("%s", end.fork_notice())
        return PromptResponse(stop_reason=up.stop_reason(end.stop_reason))  # type: ignore[arg-type]

    async def _forward(self, session: _Session, run: _Run, event: Any) -> None:
        send = self.conn.session_update
        if isinstance(event, TextDelta):
            if event.text:
                await send(session_id=session.id, update=h.update_agent_message_text(event.text))
        elif isinstance(event, ToolCallRequested):
            if event.tool == up.PLAN_TOOL:
                run.plans.add(event.call_id)
                if (plan := up.plan_update(event.arguments)) is not None:
                    await send(session_id=session.id, update=plan)
                return
            where, diff = await self._diff(session, event)
            run.open[event.call_id] = (where, diff)
            await send(session_id=session.id, update=up.tool_call_start(event, where, diff))
        elif isinstance(event, ToolResultEvent):
            if event.call_id in run.plans:
                return
            where, diff = run.open.pop(event.call_id, (None, None))
            await send(session_id=session.id, update=up.tool_call_end(event, where, diff))
        elif isinstance(event, HookNotice) and event.message:
            log.warning("%s", event.message)

    async def _diff(self, session: _Session, call: ToolCallRequested) -> tuple[str | None, Any]:
        """(absolute path of the call's file or None, (old text, new text) of an edit or None)."""
        path = call.arguments.get("path")
        if not isinstance(path, str):
            return None, None
        workspace = session.agent.registry.workspace
        try:
            full = workspace.resolve(path)
        except Exception:
            return None, None
        if call.tool not in _EDITS:
            return str(full), None
        old = await self._current_text(session, full)
        if call.tool == "write_file":
            content = call.arguments.get("content")
            return str(full), (old, content) if isinstance(content, str) else None
        before, after = call.arguments.get("old_string"), call.arguments.get("new_string")
        if old is None or not isinstance(before, str) or not isinstance(after, str) or old.count(before) != 1:
            return str(full), None
        return str(full), (old, old.replace(before, after, 1))

    async def _current_text(self, session: _Session, full: Path) -> str | None:
        """A file's text as the tools see it (the editor's buffer when they go through the editor)."""
        if not full.is_file():
            return None
        fs = self.client.fs
        if fs is not None and fs.read_text_file:
            try:
                return str((await self.conn.read_text_file(session_id=session.id, path=str(full))).content)
            except Exception:
                return None

        def read() -> str | None:
            try:
                if full.stat().st_size > _DIFF_MAX_BYTES:
                    return None
                return full.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                return None

        return await asyncio.to_thread(read)

    async def _approve(self, session: _Session, request: ToolCallRequested) -> ApprovalDecision:
        """Ask the editor about one tool call; a cancel of the turn gives the question up."""
        run = session.run
        if run is None or run.cancelled.is_set():
            return ApprovalDecision(allow=False, reason="the turn was cancelled")
        where, diff = run.open.get(request.call_id, (None, None))
        ask = asyncio.ensure_future(
            self.conn.request_permission(
                session_id=session.id,
                tool_call=up.permission_tool_call(request, where, diff),
                options=up.PERMISSION_OPTIONS,
            )
        )
        stop = asyncio.ensure_future(run.cancelled.wait())
        try:
            await asyncio.wait({ask, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            ask.cancel()
            raise
        finally:
            stop.cancel()
        if not ask.done():
            ask.cancel()
            return ApprovalDecision(allow=False, reason="the turn was cancelled")
        try:
            outcome = ask.result().outcome
        except Exception as exc:
            return ApprovalDecision(allow=False, reason=f"the editor could not ask the user: {exc}")
        if outcome.outcome != "selected":  # cancelled: deny, and the turn ends
            self.stop_run(session)
            return ApprovalDecision(allow=False, reason="the turn was cancelled")
        decision = up.decision_of(outcome.option_id)
        if decision.allow:
            update = h.update_tool_call(request.call_id, status="in_progress")
            await self.conn.session_update(session_id=session.id, update=update)
        return decision

    # ---- cancel, shutdown ------------------------------------------------------------------------------
    def stop_run(self, session: _Session) -> None:
        run = session.run
        if run is None:
            return
        run.cancelled.set()
        if session.agent.running:
            session.agent.cancel()

    async def cancel(self, session_id: str, **_: Any) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            self.stop_run(session)

    def close(self) -> None:
        """Stop every session (a running turn rolls back to its last snapshot) and the model thread."""
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                session.agent.close()
        self.opener.close()


async def serve(opener: SessionOpener, in_fd: int, out_fd: int) -> None:
    """Serve one client on the descriptors `in_fd` / `out_fd` until it closes its end."""
    from acp.agent.connection import AgentSideConnection
    from hybrid_agent.agent.acp_transport import LineTransport

    server = AcpServer(opener)
    transport = LineTransport(in_fd, out_fd)
    conn = AgentSideConnection(server, transport, listening=False)
    try:
        await conn.listen()
    finally:
        for session in server.sessions.values():
            if session.run is not None:
                server.stop_run(session)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
        await asyncio.to_thread(server.close)


def log_to_stderr(debug: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.WARNING,
        format="hybrid-agent acp: %(message)s",
    )
