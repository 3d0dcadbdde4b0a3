"""run_command: a shell command in the workspace, with its file changes journaled.

A command can change any file, so its changes cannot be caught write by write. Instead the workspace
is compared before and after: every regular file (not `.git`, not ignored, not the agent's config) is
stat-ed and its content kept beforehand; afterwards a file whose size, mtime or inode differ is read
again and, if its bytes really changed, the change is journaled like any tool write and can be
undone. Files over the snapshot budget are only stat-ed: a change to them is reported as not
undoable. The command runs in the sandbox its `SandboxPolicy` describes (tools/sandbox.py: bubblewrap,
the workspace the only writable tree, no network, the home folder hidden); with the sandbox `off` it
runs with the user's full rights. Either way it is off unless the user enables it, and asks for
approval by default.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybrid_agent.tools.base import Preview, Tool, ToolContext, ToolResult
from hybrid_agent.tools.errors import WorkspaceError
from hybrid_agent.tools.sandbox import SANDBOX_FAILED, OutputChannel, sandbox_problem, sandboxed_argv
from hybrid_agent.tools.walk import WALK_MAX_DEPTH, WalkNotes
from hybrid_agent.tools.workspace import Workspace
from pydantic import BaseModel, ConfigDict, Field

_GRACE_S = 2.0


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    inode: int
    content: bytes | None  # None: over the snapshot budget, not kept


def snapshot(
    ws: Workspace, *, budget: int, per_file_max: int, notes: WalkNotes | None = None
) -> dict[str, FileState]:
    """Stat every regular file of the workspace (listing rules), keeping contents within `budget`.
    Folders the walk leaves out (below WALK_MAX_DEPTH, unreadable) are recorded in `notes`."""
    out: dict[str, FileState] = {}
    used = 0
    for e in ws.iter_entries(".", notes=notes):
        if e.kind != "file" or ws.is_protected(e.path):
            continue
        content = None
        if e.size <= per_file_max and used + e.size <= budget:
            try:
                content = ws.read_bytes(e.path, max_bytes=per_file_max)[1]
            except WorkspaceError:
                continue  # vanished or unreadable: it cannot be journaled either way
            used += len(content)
        out[e.path] = FileState(e.size, e.mtime_ns, e.inode, content)
    return out


def journal_changes(ctx: ToolContext, before: dict[str, FileState]) -> tuple[list[str], list[str]]:
    """Record the differences between `before` and now. Returns (journaled paths, not undoable paths)."""
    ws = ctx.workspace
    after = snapshot(
        ws, budget=ctx.limits.command_snapshot_max_bytes, per_file_max=ctx.limits.journal_max_bytes
    )
    changed: list[str] = []
    lost: list[str] = []
    with ws.lock:
        for rel in sorted(before.keys() | after.keys()):
            old, new = before.get(rel), after.get(rel)
            if (
                old is not None
                and new is not None
                and (old.size, old.mtime_ns, old.inode) == (new.size, new.mtime_ns, new.inode)
            ):
                continue
            if (new is not None and new.content is None) or (old is not None and old.content is None):
                lost.append(rel)  # too big to keep a copy of
                continue
            old_bytes = None if old is None else old.content
            new_bytes = None if new is None else new.content
            if old_bytes == new_bytes:
                continue  # touched, or rewritten with the same bytes
            ctx.journal.record(ctx.turn, rel, old_bytes, new_bytes)
            changed.append(rel)
    return changed, lost


class _Output:
    """Collects a stream, keeping its head and its tail within a character budget (errors are usually
    at the end, the command's first words at the start); the middle is counted, not kept."""

    def __init__(self, budget: int) -> None:
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.dropped = 0
        self.half = max(1, budget // 2)

    def feed(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_len += len(chunk)
        while self.tail_len - len(self.tail[0]) >= self.half:
            self.dropped += len(self.tail[0])
            self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > self.half:
            self.dropped += len(tail) - self.half
            tail = tail[-self.half :]
        mid = f"\n... [{self.dropped} bytes of output not shown] ...\n" if self.dropped else ""
        return self.head.decode("utf-8", "replace") + mid + tail.decode("utf-8", "replace")


def stop_group(proc: subprocess.Popen[bytes], done: Callable[[], bool]) -> None:
    """SIGTERM the command's process group, SIGKILL whatever is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group outlives its leader while members remain
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _GRACE_S
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.02)


class RunCommand(Tool):
    """Run a shell command in the workspace folder and return its output and exit code."""

    name = "run_command"
    policy = "ask"

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")
        command: str = Field(min_length=1, description="The shell command line (run with /bin/sh -c).")
        timeout_s: int = Field(60, ge=1, le=600, description="Seconds before the command is killed.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        box = ctx.sandbox
        if not box.confined:
            note = " (not sandboxed)"
        else:
            note = " (read-only sandbox)" if box.mode == "read-only" else ""
            note += " (network allowed)" if box.network else ""
        return Preview(
            summary=f"run `{args.command}` in {ctx.workspace.root}{note}",
            command=args.command,
            path=str(ctx.workspace.root),
        )

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        limits = ctx.limits
        # Before the snapshot: a command the sandbox refuses (bwrap missing) costs nothing.
        problem = sandbox_problem(ctx.sandbox)
        if problem is not None:
            return ToolResult.error(problem)
        # No terminal and no stdin: pagers and credential prompts would wait forever.
        env = {**os.environ, "PAGER": "cat", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0"}
        if ctx.sandbox.confined:
            env["TMPDIR"] = "/tmp"  # the sandbox's own /tmp: a TMPDIR elsewhere may not be writable
        unwatched = WalkNotes()
        before = snapshot(
            ctx.workspace,
            budget=limits.command_snapshot_max_bytes,
            per_file_max=limits.journal_max_bytes,
            notes=unwatched,
        )
        out = _Output(limits.command_output_max_chars)
        channel = OutputChannel() if ctx.sandbox.confined else None
        command = ["/bin/sh", "-c", args.command]
        try:
            proc = subprocess.Popen(
                sandboxed_argv(command, ctx.sandbox, ctx.workspace.root, env, channel and channel.path),
                cwd=ctx.workspace.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if channel is None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if channel is None else channel.stderr,
                # Its own process group (bwrap's too: the command stays in it), so a timeout kills
                # the children; and its own session, so no controlling terminal is reachable from it.
                start_new_session=True,
            )
        except BaseException:
            if channel is not None:
                channel.close(reader_done=True)
            raise
        source = proc.stdout if channel is None else channel.reader
        assert source is not None

        def pump() -> None:
            # read1 returns what is there; the reader never holds more than the budget.
            while chunk := source.read1(65536):
                out.feed(chunk)

        def exited() -> bool:
            if proc.poll() is None:
                return False
            if channel is not None:
                channel.command_exited()
            return True

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + args.timeout_s
        stop_reason = None
        while True:
            try:
                proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if ctx.cancel.is_set():
                stop_reason = "cancelled"
            elif time.monotonic() > deadline:
                stop_reason = f"timed out after {args.timeout_s} s"
            if stop_reason:
                break
        background = False
        exited()
        reader.join(timeout=_GRACE_S if stop_reason is None else 0)
        if stop_reason is not None or reader.is_alive():
            # Killed, or the shell is done but a background child (`cmd &`) still holds the output
            # pipe and the call would last as long as it does. Stop the group; a daemon meant to
            # outlive the command should redirect its output (`cmd > log 2>&1 &`): then the pipe is
            # closed when the shell exits, and the daemon is left alone.
            background = stop_reason is None
            stop_group(proc, lambda: exited() and not reader.is_alive())
        # Closing while the reader is blocked in read1 would block too; a child that left the
        # group (setsid) keeps the pipe, and the daemon reader thread, until it exits.
        if channel is None:
            if not reader.is_alive():
                source.close()
            failed = b""
        else:
            failed = channel.errors()  # bwrap's own messages: it could not set the sandbox up
            channel.close(reader_done=not reader.is_alive())
        changed, lost = journal_changes(ctx, before)
        code = proc.returncode
        if failed:
            out.feed(failed)
        text = f"$ {args.command}\n{out.text()}"
        if not text.endswith("\n"):
            text += "\n"
        text += f"[{stop_reason}; killed]" if stop_reason else f"[exit code {code}]"
        if background:
            text += "\n[background processes still writing to the output were stopped]"
        if failed.startswith(b"bwrap: ") and code != 0:
            # bwrap's own failure (no user namespaces in a container, say): the command never ran.
            text += f"\n[{SANDBOX_FAILED}]"
        if changed:
            text += f"\n[changed files (undoable): {', '.join(changed)}]"
        if lost:
            text += f"\n[changed files too large to undo: {', '.join(lost)}]"
        if unwatched.too_deep:
            text += (
                f"\n[files deeper than {WALK_MAX_DEPTH} folder levels are not watched: changes the "
                "command made there were not journaled and cannot be undone]"
            )
        data = {
            "exit_code": code,
            "stopped": stop_reason,
            "changed": changed,
            "not_undoable": lost,
            "background_stopped": background,
        }
        return ToolResult(text, data=data, is_error=bool(stop_reason) or code != 0)
