"""read_file, write_file, edit_file.

Text is UTF-8. A file that is not valid UTF-8 is still shown (bad bytes as U+FFFD, with a note), but
edit_file refuses it: replacing characters in a decoding that lost bytes would corrupt the file.
Binary files (a NUL byte in the first 8 KiB, the heuristic git uses) are refused politely.
"""

from __future__ import annotations

import codecs
import difflib
from typing import Any

from hybrid_agent.tools.base import Preview, Tool, ToolContext, ToolResult
from hybrid_agent.tools.errors import ToolError, WorkspaceError
from hybrid_agent.tools.workspace import Workspace
from pydantic import BaseModel, ConfigDict, Field

_SNIFF = 8192
_LINE_CUT = 4000  # characters of one line shown; minified files have megabyte-long lines
_LINE_KEEP = 4 * _LINE_CUT + 2  # bytes of a line read: _LINE_CUT characters of UTF-8 and a newline
_DIFF_MAX = 200_000


def _looks_binary(head: bytes) -> bool:
    return b"\x00" in head


def _decode_head(raw: bytes, *, whole: bool) -> tuple[str, bool]:
    """(text, not valid UTF-8) of a line's head. When the line goes on past `raw` (`whole` false) the
    last character may be cut in two: the incremental decoder drops that half instead of calling it
    invalid."""
    try:
        return (raw.decode("utf-8") if whole else codecs.getincrementaldecoder("utf-8")().decode(raw)), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def unified_diff(rel: str, before: str | None, after: str | None) -> str:
    a = [] if before is None else before.splitlines(keepends=True)
    b = [] if after is None else after.splitlines(keepends=True)
    diff = "".join(
        difflib.unified_diff(
            a,
            b,
            fromfile="/dev/null" if before is None else f"a/{rel}",
            tofile="/dev/null" if after is None else f"b/{rel}",
        )
    )
    return diff if len(diff) <= _DIFF_MAX else diff[:_DIFF_MAX] + "\n... (diff cut)\n"


def _current_text(ctx: ToolContext, path: str) -> tuple[str, str | None]:
    """(relative path, current text or None when absent). Raises ToolError for binary / non-UTF-8."""
    rel = ctx.workspace.relative(path)
    if not ctx.workspace.resolve(path).exists():
        return rel, None
    rel, data = ctx.workspace.read_bytes(path, max_bytes=ctx.limits.write_max_bytes)
    if _looks_binary(data[:_SNIFF]):
        raise ToolError(f"{rel} is a binary file ({len(data)} bytes); these tools edit text files only")
    try:
        return rel, data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ToolError(
            f"{rel} is not valid UTF-8 (byte {e.start}); it cannot be edited as text without corrupting it"
        ) from None


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TextFileTool(Tool):
    """Where write_file and edit_file read a file's current text and write its new bytes: the workspace
    on disk here; a subclass may route both elsewhere (an editor's buffers, agent/acp_tools.py)."""

    def current_text(self, ctx: ToolContext, path: str) -> tuple[str, str | None]:
        return _current_text(ctx, path)

    def write(self, ctx: ToolContext, path: str, data: bytes) -> tuple[str, bytes | None]:
        return ctx.write_bytes(path, data)


class ReadFile(Tool):
    """Read a text file of the workspace. Long files: give start_line/end_line (1-based, inclusive)."""

    name = "read_file"
    policy = "auto"
    read_only = True

    class Args(_Args):
        path: str = Field(description="File path, relative to the workspace root.")
        start_line: int = Field(1, ge=1, description="First line to show (1-based).")
        end_line: int | None = Field(
            None, ge=1, description="Last line to show (inclusive); default: to the end."
        )
        line_numbers: bool = Field(False, description="Prefix each line with its number.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        return Preview(summary=f"read {args.path}", path=args.path)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        if args.end_line is not None and args.end_line < args.start_line:
            return ToolResult.error(f"end_line ({args.end_line}) is before start_line ({args.start_line})")
        rel, f, size = ctx.workspace.open_read(args.path)
        with f:
            if _looks_binary(f.read(_SNIFF)):
                return ToolResult.error(
                    f"{rel} is a binary file ({size} bytes); read_file shows text files only",
                    data={"binary": True},
                )
            f.seek(0)
            budget = ctx.limits.output_max_chars
            shown: list[str] = []
            used = scanned = 0
            lineno = last = 0
            replaced = truncated = eof = False
            stopped: str | None = None
            # Only the head of each line is kept (iter_lines skips the rest of a long one in chunks),
            # so a 100 MB single-line file costs kilobytes, not hundreds of megabytes.
            for raw, length in Workspace.iter_lines(f, keep=_LINE_KEEP, stop=ctx.stop_reason):
                if stopped := ctx.stop_reason():
                    break
                lineno += 1
                scanned += length + 1
                if lineno < args.start_line:
                    if scanned > ctx.limits.read_max_bytes:
                        return ToolResult.error(
                            f"line {args.start_line} of {rel} lies beyond the first "
                            f"{ctx.limits.read_max_bytes} bytes; "
                            "use grep to find what you need"
                        )
                    continue
                if args.end_line is not None and lineno > args.end_line:
                    break
                whole = length <= len(raw)  # the head holds the whole line
                line, bad = _decode_head(raw, whole=whole)
                replaced |= bad
                if not whole or len(line.rstrip("\r\n")) > _LINE_CUT:
                    line = (
                        line[:_LINE_CUT]
                        + f" ... [line cut: {length} bytes long, its first {_LINE_CUT} characters shown]\n"
                    )
                if args.line_numbers:
                    line = f"{lineno:6}\t{line}"
                if used + len(line) > budget and shown:
                    truncated = True
                    break
                shown.append(line)
                used += len(line)
                last = lineno
            else:
                # iter_lines also ends early when the budget runs out inside a long line
                stopped = ctx.stop_reason()
                eof = stopped is None
        if stopped and not shown:
            return ToolResult.error(
                f"reading {rel} stopped before line {args.start_line}: {stopped}; "
                "use grep to find what you need"
            )
        total = lineno if eof else None  # known only when the whole file was read
        if total == 0:
            return ToolResult(f"{rel} is empty", data={"path": rel, "total_lines": 0})
        if not shown:
            return ToolResult.error(
                f"{rel} has only {lineno} lines; start_line {args.start_line} is past the end"
            )
        of = f" of {total}" if total is not None else ""
        text = f"[{rel}: lines {args.start_line}-{last}{of}]\n" + "".join(shown)
        if not text.endswith("\n"):
            text += "\n"
        if truncated:
            text += f"[output cut at line {last}: continue with start_line={last + 1}]\n"
        if stopped:
            text += f"[stopped after line {last}: {stopped}; continue with start_line={last + 1}]\n"
        if replaced:
            text += "[note: the file is not valid UTF-8; undecodable bytes are shown as \ufffd]\n"
        data = {
            "path": rel,
            "start_line": args.start_line,
            "end_line": last,
            "total_lines": total,
            "truncated": truncated or bool(stopped),
            "not_utf8": replaced,
            "size": size,
        }
        return ToolResult(text, data=data)


class WriteFile(_TextFileTool):
    """Create or overwrite a text file in the workspace (folders are created as needed)."""

    name = "write_file"
    policy = "ask"

    class Args(_Args):
        path: str = Field(description="File path, relative to the workspace root.")
        content: str = Field(description="The complete new content of the file.")

    def _check(self, args: Any, ctx: ToolContext) -> bytes:
        data = args.content.encode("utf-8")
        if len(data) > ctx.limits.write_max_bytes:
            raise ToolError(f"content is {len(data)} bytes, over the limit of {ctx.limits.write_max_bytes}")
        return data

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        try:
            self._check(args, ctx)
            rel, before = self.current_text(ctx, args.path)
        except ToolError as e:
            return Preview(summary=f"write {args.path} (will fail: {e})", path=args.path)
        verb = "create" if before is None else "overwrite"
        return Preview(summary=f"{verb} {rel}", diff=unified_diff(rel, before, args.content), path=rel)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        data = self._check(args, ctx)
        rel, before = self.write(ctx, args.path, data)
        verb = "created" if before is None else "unchanged" if before == data else "overwrote"
        return ToolResult(f"{verb} {rel} ({len(data)} bytes)", data={"path": rel, "bytes": len(data)})


def _occurrences(text: str, snippet: str) -> list[int]:
    """Start offsets of `snippet` in `text`, overlapping ones included (they make an edit ambiguous too)."""
    found, i = [], text.find(snippet)
    while i != -1:
        found.append(i)
        i = text.find(snippet, i + 1)
    return found


class EditFile(_TextFileTool):
    """Replace an exact snippet of a text file. old_string must occur exactly once in the file:
    include enough surrounding lines to make it unique."""

    name = "edit_file"
    policy = "ask"

    class Args(_Args):
        path: str = Field(description="File path, relative to the workspace root.")
        old_string: str = Field(description="The exact text to replace (whitespace included).")
        new_string: str = Field(description="The text to put in its place.")

    def _plan(self, args: Any, ctx: ToolContext) -> tuple[str, str, str, int]:
        if not args.old_string:
            raise ToolError("old_string is empty; to create or replace a whole file use write_file")
        rel, text = self.current_text(ctx, args.path)
        if text is None:
            raise WorkspaceError(f"{rel} does not exist; create it with write_file")
        hits = _occurrences(text, args.old_string)
        if not hits:
            hint = ""
            if "\r\n" in text and "\n" in args.old_string and "\r\n" not in args.old_string:
                hint = " (the file has Windows line endings, \\r\\n: include them in old_string)"
            elif " ".join(args.old_string.split()) in " ".join(text.split()):
                hint = " (it does occur with different whitespace or indentation: copy it exactly)"
            raise ToolError(f"old_string was not found in {rel}{hint}; nothing was changed")
        if len(hits) > 1:
            lines = ", ".join(str(text.count("\n", 0, i) + 1) for i in hits[:10])
            raise ToolError(
                f"old_string occurs {len(hits)} times in {rel} (at lines {lines}); include more surrounding "
                "text so that it occurs exactly once. Nothing was changed."
            )
        new = text[: hits[0]] + args.new_string + text[hits[0] + len(args.old_string) :]
        return rel, text, new, text.count("\n", 0, hits[0]) + 1

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        try:
            rel, old, new, _ = self._plan(args, ctx)
        except ToolError as e:
            return Preview(summary=f"edit {args.path} (will fail: {e})", path=args.path)
        return Preview(summary=f"edit {rel}", diff=unified_diff(rel, old, new), path=rel)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        rel, old, new, line = self._plan(args, ctx)
        data = new.encode("utf-8")
        if len(data) > ctx.limits.write_max_bytes:
            raise ToolError(
                f"the edited file would be {len(data)} bytes, over the limit of {ctx.limits.write_max_bytes}"
            )
        # Re-check under the workspace lock that nobody changed the file since we read it, so a
        # concurrent write is never silently overwritten by our older copy.
        with ctx.workspace.lock:
            _, now = self.current_text(ctx, args.path)
            if now != old:
                raise ToolError(f"{rel} changed while being edited; read it again and retry")
            self.write(ctx, args.path, data)
        return ToolResult(f"edited {rel} at line {line}", data={"path": rel, "line": line})
