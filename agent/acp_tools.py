"""The tools an ACP session adds or changes (agent/acp_server.py).

- When the editor offers `fs/read_text_file` / `fs/write_text_file`, read_file, write_file and
  edit_file go through it (absolute paths, confined to the workspace as on disk), so the model sees
  the editor's unsaved buffers and the editor records the edits. A write is still journaled in the
  session's file changes (tools/journal.py), so undo and rewind know about it.
- `update_plan` lets the model keep a plan the editor shows (an ACP `plan` update); it changes nothing.

Tools run in a worker thread (agent/toolcalls.py) while the connection lives on the event loop: a
call to the editor is scheduled on that loop and waited for here, a cancel of the turn ending the
wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Literal

from hybrid_agent.tools.base import Tool, ToolContext, ToolResult
from hybrid_agent.tools.builtins.files import EditFile, ReadFile, WriteFile
from hybrid_agent.tools.errors import ToolError
from hybrid_agent.tools.journal import JournaledChange
from pydantic import BaseModel, ConfigDict, Field

CLIENT_TIMEOUT_S = 60.0  # an editor that does not answer a file request within this fails the call
_OUTPUT_CUT = 50_000


class ClientFiles:
    """The editor's file system, as the session `session_id` of connection `conn` sees it."""

    def __init__(
        self, conn: Any, loop: asyncio.AbstractEventLoop, session_id: str, *, read: bool, write: bool
    ) -> None:
        self.conn, self.loop, self.session_id = conn, loop, session_id
        self.can_read, self.can_write = read, write

    def _wait(self, coro: Any, ctx: ToolContext, what: str) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if ctx.cancel.is_set():
                    future.cancel()
                    raise ToolError(f"{what}: the call was cancelled") from None
                if time.monotonic() > deadline:
                    future.cancel()
                    raise ToolError(f"{what}: the editor did not answer in {CLIENT_TIMEOUT_S:g} s") from None
            except ToolError:
                raise
            except Exception as exc:
                raise ToolError(f"{what}: the editor answered with an error: {exc}") from None

    def read(self, ctx: ToolContext, path: str) -> tuple[str, str]:
        """(relative path, text) of a file through the editor."""
        rel, full = ctx.workspace.relative(path), str(ctx.workspace.resolve(path))
        response = self._wait(
            self.conn.read_text_file(session_id=self.session_id, path=full), ctx, f"reading {rel}"
        )
        return rel, response.content

    def current(self, ctx: ToolContext, path: str) -> tuple[str, str | None]:
        """(relative path, text or None when the file does not exist)."""
        rel, full = ctx.workspace.relative(path), ctx.workspace.resolve(path)
        if not full.exists():  # an unsaved new buffer is not a file the model can know of either
            return rel, None
        return self.read(ctx, path)

    def write(self, ctx: ToolContext, path: str, data: bytes) -> tuple[str, bytes | None]:
        """Write through the editor, journaled as a workspace write is: (relative path, old bytes)."""
        rel = ctx.workspace.relative(path)
        if rel == "." or ctx.workspace.is_protected(rel):
            raise ToolError(f"{rel} cannot be written: it is the workspace root or inside a protected folder")
        _, old = self.current(ctx, path)
        before = None if old is None else old.encode("utf-8")
        full = str(ctx.workspace.resolve(path))
        with ctx.workspace.lock:
            change = JournaledChange(ctx.journal, ctx.workspace, ctx.turn, data)
            change.before_write(rel, before)
            try:
                self._wait(
                    self.conn.write_text_file(
                        session_id=self.session_id, path=full, content=data.decode("utf-8")
                    ),
                    ctx,
                    f"writing {rel}",
                )
            except BaseException:
                change.failed()
                raise
            change.done()
        return rel, before


class ClientReadFile(ReadFile):
    """read_file through the editor (its buffers, saved or not)."""

    def __init__(self, files: ClientFiles) -> None:
        super().__init__()
        self.files = files

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        if args.end_line is not None and args.end_line < args.start_line:
            return ToolResult.error(f"end_line ({args.end_line}) is before start_line ({args.start_line})")
        rel, text = self.files.read(ctx, args.path)
        if "\x00" in text[:8192]:
            return ToolResult.error(f"{rel} is a binary file; read_file shows text files only")
        lines = text.splitlines(keepends=True)
        if not lines:
            return ToolResult(f"{rel} is empty", data={"path": rel, "total_lines": 0})
        if args.start_line > len(lines):
            return ToolResult.error(
                f"{rel} has only {len(lines)} lines; start_line {args.start_line} is past the end"
            )
        end = min(args.end_line or len(lines), len(lines))
        shown: list[str] = []
        used, last = 0, args.start_line - 1
        for n in range(args.start_line, end + 1):
            line = lines[n - 1] if lines[n - 1].endswith("\n") else lines[n - 1] + "\n"
            if args.line_numbers:
                line = f"{n:6}\t{line}"
            if used + len(line) > _OUTPUT_CUT and shown:
                break
            shown.append(line)
            used, last = used + len(line), n
        out = f"[{rel}: lines {args.start_line}-{last} of {len(lines)}]\n" + "".join(shown)
        if last < end:
            out += f"[output cut at line {last}: continue with start_line={last + 1}]\n"
        data = {"path": rel, "start_line": args.start_line, "end_line": last, "total_lines": len(lines)}
        return ToolResult(out, data=data)


class _ThroughEditor:
    """The two file-tool methods that read and write (tools/builtins/files.py), sent to the editor."""

    files: ClientFiles

    def current_text(self, ctx: ToolContext, path: str) -> tuple[str, str | None]:
        return self.files.current(ctx, path)

    def write(self, ctx: ToolContext, path: str, data: bytes) -> tuple[str, bytes | None]:
        return self.files.write(ctx, path, data)


class ClientWriteFile(_ThroughEditor, WriteFile):
    """write_file through the editor."""

    def __init__(self, files: ClientFiles) -> None:
        super().__init__()
        self.files = files


class ClientEditFile(_ThroughEditor, EditFile):
    """edit_file through the editor."""

    def __init__(self, files: ClientFiles) -> None:
        super().__init__()
        self.files = files


def client_file_tools(files: ClientFiles) -> list[Tool]:
    """The file tools the editor's capabilities allow routing through it."""
    tools: list[Tool] = []
    if files.can_read:
        tools.append(ClientReadFile(files))
    if files.can_read and files.can_write:  # an edit reads the file first, in the editor too
        tools += [ClientWriteFile(files), ClientEditFile(files)]
    return tools


class _PlanEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(description="What this step does, in a few words.")
    priority: Literal["high", "medium", "low"] = "medium"
    status: Literal["pending", "in_progress", "completed"] = "pending"


class UpdatePlan(Tool):
    """Show the user your plan for this task as a list of steps, with each step's status. Send the
    whole list each time a step starts or ends."""

    name = "update_plan"
    policy = "auto"

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")
        entries: list[_PlanEntry] = Field(description="Every step of the plan, in order.")

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        done = sum(e.status == "completed" for e in args.entries)
        return ToolResult(f"plan updated: {len(args.entries)} steps, {done} completed")
