"""Mount the tools of a Model Context Protocol server (stdio, or streamable HTTP) into a ToolRegistry.

Design choices:
- The registry is synchronous; the MCP SDK is async and its session must live in one task for its
  whole life (its transport and task groups are scoped). So each server gets a background thread
  running its own event loop, where one long-lived task owns the transport (`stdio_client`, or
  `streamable_http_client` when a `url` is given) + `ClientSession`.
  Calls are submitted to that loop with `run_coroutine_threadsafe` and waited for with a timeout;
  closing sets an event that lets the owning task leave its context managers normally (the SDK's
  shutdown then closes stdin, waits, and kills the server's process group).
- MCP tools default to `ask`: their annotations (`read_only_hint`, ...) come from the server and are
  untrusted. Only `read_only_hint` is used: a tool without it counts as one that writes (plan mode
  does not offer it); one with it is still asked about before it runs.
- Arguments are checked lightly here (an object; required keys; top-level JSON types), the server
  validates the rest and answers with `is_error`, which maps onto our error result.
- The server's stderr goes to a temporary file, not to our terminal (it would scribble over the
  TUI); its tail is quoted when the server fails to start or dies.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import re
import tempfile
import threading
from typing import Any

from hybrid_agent.tools.base import Preview, Tool, ToolContext, ToolResult, strip_titles
from hybrid_agent.tools.errors import ArgumentsError, MCPServerError
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, PaginatedRequestParams
from mcp.types import Tool as MCPToolDefinition

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _leaf(e: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, for a readable message."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


class MCPConnection:
    """One running MCP server and its client session, usable from any thread."""

    def __init__(
        self,
        server: str,
        command: str | None = None,
        args: list[str] | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float = 60.0,
        start_timeout_s: float = 60.0,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", server):
            raise MCPServerError(f"MCP server name {server!r}: use 1-32 letters, digits, '_' or '-'")
        self.server = server
        self.timeout_s = timeout_s
        if (command is None) == (url is None):
            raise MCPServerError(f"MCP server {server!r}: give a command (stdio) or a url (http), not both")
        self.url, self.headers = url, dict(headers or {})
        args = list(args or [])
        self._params = (
            StdioServerParameters(command=command, args=args, env=env, cwd=cwd) if command else None
        )
        # Lives as long as the connection (closed by the finalizer), hence no `with`.
        self._errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready: concurrent.futures.Future[list[MCPToolDefinition]] = concurrent.futures.Future()
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run_loop, name=f"mcp-{server}", daemon=True)
        self._thread.start()
        try:
            self.definitions = self._ready.result(timeout=start_timeout_s)
        except BaseException as e:
            self.close()  # stops the process first, so its last stderr lines are in the file
            reason = (
                "no answer in time"
                if isinstance(e, TimeoutError)
                else f"{type(_leaf(e)).__name__}: {_leaf(e)}"
            )
            what = url if url is not None else " ".join([command or "", *args])
            message = f"MCP server {server!r} ({what}) did not start: {reason}."
            raise MCPServerError(message + self.stderr_tail()) from None
        atexit.register(self.close)

    # --- the loop thread ---------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._task)
        except BaseException:
            pass  # reported through self._ready, or the server just went away after start
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            async with self._transport() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                definitions: list[MCPToolDefinition] = []
                cursor = None
                while True:  # tools/list is paginated
                    page = await session.list_tools(
                        params=PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                    definitions.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self._session = session
                self._ready.set_result(definitions)
                await self._stop.wait()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._session = None

    def _transport(self) -> Any:
        if self._params is not None:
            return stdio_client(self._params, errlog=self._errlog)
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        # The client is closed by the transport's exit only when the transport made it, so it is
        # entered here together with the transport.
        @contextlib.asynccontextmanager
        async def both() -> Any:
            async with (
                create_mcp_http_client(headers=self.headers) as client,
                streamable_http_client(self.url or "", http_client=client) as streams,
            ):
                yield streams[0], streams[1]

        return both()

    # --- used from other threads ------------------------------------------------------------------

    def __del__(self) -> None:
        if hasattr(self, "_errlog"):  # not when the name was refused
            self._errlog.close()

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            self._errlog.flush()
            self._errlog.seek(0)
            tail = self._errlog.read()[-chars:].strip()
        except (OSError, ValueError):
            return ""
        return f"\nserver stderr (last lines):\n{tail}" if tail else ""

    def tools(self) -> list[MCPTool]:
        return [MCPTool(self, d) for d in self.definitions]

    def call_tool(
        self, name: str, arguments: dict[str, Any], cancel: threading.Event | None = None
    ) -> ToolResult:
        session = self._session
        if session is None or self._closed:
            return ToolResult.error(f"MCP server {self.server!r} is not running")
        future = asyncio.run_coroutine_threadsafe(
            session.call_tool(name, arguments, read_timeout_seconds=self.timeout_s), self._loop
        )
        waited = 0.0
        while True:
            try:
                result = future.result(timeout=0.1)
                break
            except concurrent.futures.TimeoutError:
                waited += 0.1
                if cancel is not None and cancel.is_set():
                    future.cancel()
                    return ToolResult.error(f"{name} on MCP server {self.server!r} was cancelled")
                if waited > self.timeout_s + 5:  # the SDK's own read timeout should have fired first
                    future.cancel()
                    return ToolResult.error(
                        f"{name} on MCP server {self.server!r}: no answer in {self.timeout_s} s"
                    )
            except Exception as e:
                e = _leaf(e)
                return ToolResult.error(
                    f"{name} on MCP server {self.server!r} failed: {type(e).__name__}: {e}"
                )
        return result_from_mcp(result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
                if not self._ready.done() and self._task is not None:
                    # Still starting (a hung initialize): no session to leave politely.
                    self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:
                pass  # the loop already finished
            self._thread.join(timeout=15)


def result_from_mcp(res: CallToolResult) -> ToolResult:
    parts: list[str] = []
    for block in res.content:
        kind = block.type
        if kind == "text":
            parts.append(block.text)  # type: ignore[union-attr]
        elif kind in ("image", "audio"):
            size = len(block.data) * 3 // 4  # type: ignore[union-attr]
            parts.append(f"[{kind} {block.mime_type}, about {size} bytes]")  # type: ignore[union-attr]
        elif kind == "resource":
            resource = block.resource  # type: ignore[union-attr]
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri}]")  # type: ignore[union-attr]
        else:
            parts.append(f"[{kind} content]")
    text = "\n".join(parts)
    if not text and res.structured_content is not None:
        text = json.dumps(res.structured_content, ensure_ascii=False)
    return ToolResult(text or "(no output)", data=res.structured_content, is_error=res.is_error)


class MCPTool(Tool):
    """A tool of an MCP server, as the registry sees it."""

    policy = "ask"

    def __init__(self, conn: MCPConnection, definition: MCPToolDefinition) -> None:
        self.conn = conn
        self.remote_name = definition.name
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{conn.server}__{definition.name}")[:64]
        self.description = definition.description or f"Tool {definition.name} of MCP server {conn.server}."
        self.input_schema: dict[str, Any] = dict(definition.input_schema)
        self.annotations = definition.annotations  # untrusted hints
        self.read_only = bool(self.annotations is not None and self.annotations.read_only_hint)
        self.source = f"mcp:{conn.server}"
        super().__init__()

    def parameters_schema(self) -> dict[str, Any]:
        return strip_titles(self.input_schema)

    def parse_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        props: dict[str, Any] = self.input_schema.get("properties") or {}
        problems = [f"{k}: required" for k in self.input_schema.get("required", []) if k not in arguments]
        if self.input_schema.get("additionalProperties") is False:
            problems += [f"{k}: not a parameter of this tool" for k in arguments if k not in props]
        for key, value in arguments.items():
            want = props.get(key, {}).get("type") if isinstance(props.get(key), dict) else None
            names = [want] if isinstance(want, str) else want if isinstance(want, list) else []
            allowed = tuple(t for n in names for t in _JSON_TYPES.get(n, ()))
            # bool is an int in Python but not an "integer" in JSON.
            bad_bool = isinstance(value, bool) and "boolean" not in names
            if allowed and (not isinstance(value, allowed) or bad_bool):
                problems.append(f"{key}: expected {' or '.join(names)}, got {type(value).__name__}")
        if problems:
            raise ArgumentsError(f"Invalid arguments for {self.name}: " + "; ".join(problems))
        return dict(arguments)

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        shown = json.dumps(args, ensure_ascii=False)
        return Preview(summary=f"call {self.remote_name} on MCP server {self.conn.server} with {shown}")

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        result = self.conn.call_tool(self.remote_name, args, cancel=ctx.cancel)
        cap = ctx.limits.output_max_chars
        if len(result.text) > cap:
            result.text = result.text[:cap] + f"\n[output cut at {cap} characters]"
        return result
