"""list_dir, glob, grep: read-only views of the workspace.

They skip `.git` and honour `.gitignore` files (for relevance: build outputs and vendored code drown
what the model looks for). Every result list is capped and says when it was cut.
"""

from __future__ import annotations

import re
import time
from typing import Any

from hybrid_agent.tools.base import Preview, Tool, ToolContext, ToolResult
from hybrid_agent.tools.errors import ToolError, WorkspaceError
from pydantic import BaseModel, ConfigDict, Field

_GREP_SECONDS = 20.0  # a pathological regex must not hang the turn
_MATCH_LINE_CUT = 300


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: `*` and `?` stay within one folder, `**` spans folders, `[abc]` / `[!abc]` sets."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (j := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1 : j]
            inner = "^" + inner[1:] if inner.startswith("!") else inner
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _matcher(pattern: str) -> Any:
    """A predicate on paths relative to the search folder. A pattern without '/' matches file names at
    any depth (`*.py`), which is what people and models mean by it."""
    rx = glob_regex(pattern)
    if "/" in pattern:
        return lambda rel: rx.match(rel) is not None
    return lambda rel: rx.match(rel.rsplit("/", 1)[-1]) is not None


def _under(base_rel: str, rel: str) -> str:
    return rel if base_rel == "." else rel[len(base_rel) + 1 :]


class ListDir(Tool):
    """List a folder of the workspace (folders end with '/'). recursive=true lists the whole tree."""

    name = "list_dir"
    policy = "auto"

    class Args(_Args):
        path: str = Field(".", description="Folder, relative to the workspace root.")
        recursive: bool = Field(False, description="Also list sub-folders.")
        max_depth: int | None = Field(None, ge=1, description="With recursive: how many levels deep.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        return Preview(summary=f"list {args.path}", path=args.path)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        ws = ctx.workspace
        base_rel = ws.relative(args.path)
        cap = ctx.limits.list_max_entries
        lines: list[str] = []
        cut = False
        for e in ws.iter_entries(args.path, recursive=args.recursive, max_depth=args.max_depth):
            if len(lines) >= cap:
                cut = True
                break
            shown = _under(base_rel, e.path)
            lines.append(
                shown + "/"
                if e.kind == "dir"
                else f"{shown}  ({e.size} bytes)"
                if e.kind == "file"
                else f"{shown}  ({e.kind})"
            )
        text = f"[{base_rel}: {len(lines)} entries]\n" + "\n".join(lines)
        if cut:
            text += f"\n[cut at {cap} entries: list a sub-folder]"
        return ToolResult(text, data={"path": base_rel, "entries": lines, "truncated": cut})


class Glob(Tool):
    """Find files by name pattern, e.g. '*.py' (any depth), 'src/**/*.ts', 'tests/test_?.py'."""

    name = "glob"
    policy = "auto"

    class Args(_Args):
        pattern: str = Field(description="Glob pattern; without '/', it matches file names at any depth.")
        path: str = Field(".", description="Folder to search in, relative to the workspace root.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        return Preview(summary=f"glob {args.pattern} in {args.path}", path=args.path)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        ws = ctx.workspace
        base_rel = ws.relative(args.path)
        match = _matcher(args.pattern)
        cap = ctx.limits.list_max_entries
        found: list[str] = []
        cut = False
        for e in ws.iter_entries(args.path):
            if e.kind == "dir" or not match(_under(base_rel, e.path)):
                continue
            if len(found) >= cap:
                cut = True
                break
            found.append(e.path)
        if not found:
            return ToolResult(f"no files match {args.pattern!r} in {base_rel}", data={"paths": []})
        text = "\n".join(found) + (f"\n[cut at {cap} paths: narrow the pattern]" if cut else "")
        return ToolResult(text, data={"paths": found, "truncated": cut})


class Grep(Tool):
    """Search file contents with a regular expression (Python syntax). Prints path:line: text."""

    name = "grep"
    policy = "auto"

    class Args(_Args):
        pattern: str = Field(description="Regular expression to search for.")
        path: str = Field(".", description="File or folder to search, relative to the workspace root.")
        glob: str | None = Field(
            None, description="Only search files whose names match this glob, e.g. '*.py'."
        )
        ignore_case: bool = Field(False, description="Match regardless of case.")
        max_results: int = Field(100, ge=1, description="Stop after this many matching lines.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        return Preview(summary=f"grep {args.pattern!r} in {args.path}", path=args.path)

    def _files(self, ctx: ToolContext, args: Any) -> list[str]:
        ws = ctx.workspace
        target = ws.resolve(args.path)
        base_rel = ws.relative(args.path)
        if not target.is_dir():
            return [base_rel]
        match = _matcher(args.glob) if args.glob else None
        return [
            e.path
            for e in ws.iter_entries(args.path)
            if e.kind == "file"
            and (match is None or match(_under(base_rel, e.path)))
            and e.size <= ctx.limits.grep_max_file_bytes
        ]

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        try:
            rx = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
        except re.error as e:
            raise ToolError(f"invalid regular expression {args.pattern!r}: {e}") from None
        cap = min(args.max_results, ctx.limits.grep_max_results)
        deadline = time.monotonic() + _GREP_SECONDS
        hits: list[str] = []
        cut = stopped = False
        files = self._files(ctx, args)
        for rel in files:
            if ctx.cancel.is_set() or time.monotonic() > deadline:
                stopped = True
                break
            try:
                _, data = ctx.workspace.read_bytes(rel, max_bytes=ctx.limits.grep_max_file_bytes)
            except WorkspaceError:
                if len(files) == 1:
                    raise
                continue  # a link out of the workspace, a FIFO, a file that vanished: not searchable
            if b"\x00" in data[:8192]:
                continue
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if rx.search(line):
                    if len(hits) >= cap:
                        cut = True
                        break
                    hits.append(f"{rel}:{n}: {line[:_MATCH_LINE_CUT]}")
            if cut:
                break
        text = "\n".join(hits) if hits else f"no matches for {args.pattern!r}"
        if cut:
            text += f"\n[cut at {cap} matches: narrow the search]"
        if stopped:
            text += "\n[search stopped early (time limit or cancelled); results are partial]"
        return ToolResult(text, data={"matches": hits, "truncated": cut or stopped})
