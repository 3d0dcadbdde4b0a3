"""list_dir, glob, grep: read-only views of the workspace.

They skip `.git` and honour `.gitignore` files (for relevance: build outputs and vendored code drown
what the model looks for). Every result list is capped and says when it was cut, and every result
says what was left out and why: folders below the walk's depth limit, files grep could not search
(binary, not regular, unreadable), lines searched only in part, and a stop by the call's time budget.

Patterns (grep's regular expressions and the globs) run on the `regex` engine with a timeout taken
from the call's budget: a catastrophic pattern such as `(a+)+$` ends the call with a message instead
of backtracking for hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import regex
from hybrid_agent.tools.base import Preview, Tool, ToolContext, ToolResult
from hybrid_agent.tools.errors import ToolError, WorkspaceError
from hybrid_agent.tools.walk import WalkNotes
from pydantic import BaseModel, ConfigDict, Field

_MATCH_LINE_CUT = 300
_SNIFF = 8192  # a NUL byte in the first 8 KiB marks a binary file (git's heuristic)
_READ_CHUNK = 1 << 20  # grep reads and searches about this many bytes of lines at once
_MIN_TIMEOUT = 0.001  # regex needs a positive timeout; the budget check right after ends the call


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def glob_regex(pattern: str) -> Any:
    """Compile a glob: `*` and `?` stay within one folder, `**` spans folders, `[abc]` / `[!abc]` sets.
    The result is a `regex` pattern: match it with a timeout (globs like `*a*a*a*a*b` backtrack)."""
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
    try:
        return regex.compile("".join(out) + r"\Z")
    except regex.error as e:
        raise ToolError(f"invalid glob {pattern!r}: {e}") from None


def _matcher(pattern: str, ctx: ToolContext) -> Any:
    """A predicate on paths relative to the search folder. A pattern without '/' matches file names at
    any depth (`*.py`), which is what people and models mean by it. Raises TimeoutError when the
    call's budget runs out inside a match."""
    rx = glob_regex(pattern)
    if "/" in pattern:
        return lambda rel: rx.match(rel, timeout=_timeout(ctx)) is not None
    return lambda rel: rx.match(rel.rsplit("/", 1)[-1], timeout=_timeout(ctx)) is not None


def _timeout(ctx: ToolContext) -> float:
    """The timeout for one match: what is left of the call's budget. (The regex engine counts it in
    CPU time of the process, so it is a bound on the wall clock only as far as this thread runs.)"""
    return max(ctx.time_left(), _MIN_TIMEOUT)


def _under(base_rel: str, rel: str) -> str:
    return rel if base_rel == "." else rel[len(base_rel) + 1 :]


def _stopped(ctx: ToolContext, hint: str) -> str:
    reason = ctx.stop_reason() or "the call's time budget ran out inside a pattern match"
    return f"[stopped early: {reason}; the results are partial: {hint}]"


def _footer(notes: WalkNotes, stopped: str | None, extra: list[str] | None = None) -> str:
    """The lines that say what a result left out, each in brackets, after the result itself."""
    lines = [f"[{line}]" for line in [*notes.lines(), *(extra or [])]]
    if stopped:
        lines.append(stopped)
    return "".join("\n" + line for line in lines)


class ListDir(Tool):
    """List a folder of the workspace (folders end with '/'). recursive=true lists the whole tree."""

    name = "list_dir"
    policy = "auto"
    read_only = True

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
        stopped = None
        notes = WalkNotes()
        for e in ws.iter_entries(args.path, recursive=args.recursive, max_depth=args.max_depth, notes=notes):
            if ctx.stop_reason():
                stopped = _stopped(ctx, "list a sub-folder")
                break
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
        text += _footer(notes, stopped)
        data = {"path": base_rel, "entries": lines, "truncated": cut or stopped is not None}
        return ToolResult(text, data=data)


class Glob(Tool):
    """Find files by name pattern, e.g. '*.py' (any depth), 'src/**/*.ts', 'tests/test_?.py'."""

    name = "glob"
    policy = "auto"
    read_only = True

    class Args(_Args):
        pattern: str = Field(description="Glob pattern; without '/', it matches file names at any depth.")
        path: str = Field(".", description="Folder to search in, relative to the workspace root.")

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        return Preview(summary=f"glob {args.pattern} in {args.path}", path=args.path)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        ws = ctx.workspace
        base_rel = ws.relative(args.path)
        match = _matcher(args.pattern, ctx)
        cap = ctx.limits.list_max_entries
        found: list[str] = []
        cut = False
        stopped = None
        notes = WalkNotes()
        try:
            for e in ws.iter_entries(args.path, notes=notes):
                if ctx.stop_reason():
                    stopped = _stopped(ctx, "narrow the pattern or the folder")
                    break
                if e.kind == "dir" or not match(_under(base_rel, e.path)):
                    continue
                if len(found) >= cap:
                    cut = True
                    break
                found.append(e.path)
        except TimeoutError:
            stopped = _stopped(ctx, "simplify the pattern")
        footer = _footer(notes, stopped)
        data = {"paths": found, "truncated": cut or stopped is not None}
        if not found:
            return ToolResult(f"no files match {args.pattern!r} in {base_rel}" + footer, data=data)
        text = "\n".join(found) + (f"\n[cut at {cap} paths: narrow the pattern]" if cut else "")
        return ToolResult(text + footer, data=data)


# A pattern whose match on a line can depend on there being nothing before or after it (string
# anchors, negative lookarounds) could miss that match inside a block of lines, and inline flags other
# than these few change how a search runs (reverse, fuzzy best match, version 1 sets, ...): such
# patterns are matched line by line only.
_EDGE_SENSITIVE = regex.compile(r"\\[AZzG]|\(\?<?!")
_INLINE_FLAGS = regex.compile(r"\(\?([\w-]+)[:)]")
_BLOCK_SAFE_FLAGS = frozenset("imsxauL")


def _block_safe(pattern: str) -> bool:
    if _EDGE_SENSITIVE.search(pattern):
        return False
    return all(set(flags) <= _BLOCK_SAFE_FLAGS for flags in _INLINE_FLAGS.findall(pattern))


class _LineSearch:
    """grep's matching: a line matches when `rx.search(line)` does. Every search carries a timeout from
    the call's budget (the regex engine then stops inside a catastrophic backtrack).

    A timeout costs a few microseconds per search, so lines are searched a block at a time: one
    MULTILINE search over the block finds the first line that can match, that line alone is checked,
    and the block search goes on from the next line. Any match of a line is also a match inside the
    block (its neighbours only add newlines, which `^`/`$` in MULTILINE mode treat as line edges), so
    no line is missed; patterns for which that is not so (see _block_safe) are searched line by line."""

    def __init__(self, ctx: ToolContext, rx: Any, pattern: str, cap: int) -> None:
        self.ctx, self.rx, self.cap = ctx, rx, cap
        self.block_rx = regex.compile(pattern, rx.flags | regex.M) if _block_safe(pattern) else None
        self.hits: list[str] = []

    def _line(self, rel: str, n: int, line: str) -> str | None:
        if self.rx.search(line, timeout=_timeout(self.ctx)):
            if len(self.hits) >= self.cap:
                return "cut"
            self.hits.append(f"{rel}:{n}: {line[:_MATCH_LINE_CUT]}")
        return None

    def block(self, rel: str, first: int, text: str) -> str | None:
        """Search the lines of `text` ('\\n'-separated, no final newline), its first line being line
        `first` of `rel`. Returns "cut", "stopped" or None, like Grep._search_file. Raises TimeoutError
        from inside a match."""
        if self.ctx.stop_reason():
            return "stopped"
        if self.block_rx is None:
            for i, line in enumerate(text.split("\n")):
                if end := self._line(rel, first + i, line):
                    return end
            return None
        pos = counted = 0  # where the next block search starts; newlines before `counted` are counted
        n = first
        while pos <= len(text) and (m := self.block_rx.search(text, pos, timeout=_timeout(self.ctx))):
            at = m.start()
            n += text.count("\n", counted, at)
            counted = at
            start, stop = text.rfind("\n", 0, at) + 1, text.find("\n", at)
            stop = len(text) if stop == -1 else stop
            if end := self._line(rel, n, text[start:stop]):
                return end
            pos = stop + 1
        return None


def _line_blocks(f: Any, line_max: int, stop: Any) -> Any:
    """(text, cut) pairs covering `f`: `text` holds whole lines, decoded and joined by '\\n' (about
    _READ_CHUNK bytes of them), `cut` the indexes in it of lines longer than `line_max` bytes, which
    are kept to their first `line_max` bytes. Memory is O(_READ_CHUNK + line_max) whatever the file."""
    head, length = b"", 0  # the line that runs past the chunk read so far: its first bytes, its length
    while chunk := f.read(_READ_CHUNK):
        parts = chunk.split(b"\n")
        tail = parts.pop()  # the start of a line that ends in a later chunk (or at the end of the file)
        if parts:
            lengths = [length + len(parts[0]), *map(len, parts[1:])]
            parts[0] = head + parts[0][: max(line_max - len(head), 0)]
            cut = [i for i, n in enumerate(lengths) if n > line_max] if max(lengths) > line_max else []
            for i in cut:
                parts[i] = parts[i][:line_max]
            yield _decode(b"\n".join(parts)), cut
            head, length = b"", 0
        head += tail[: max(line_max - len(head), 0)]
        length += len(tail)
        if stop():
            return
    if length:
        yield _decode(head), [0] if length > line_max else []


def _decode(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").removesuffix("\r") if "\r" in text else text


@dataclass
class _Skipped:
    """Files grep did not search, or searched in part, by reason."""

    binary: list[str] = field(default_factory=list)
    not_regular: list[str] = field(default_factory=list)  # symbolic links (never followed), FIFOs, devices
    unreadable: list[str] = field(default_factory=list)  # "why" messages
    long_lines: list[str] = field(default_factory=list)  # "path:line"

    def lines(self, line_max: int) -> list[str]:
        def some(items: list[str]) -> str:
            return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

        out = []
        if self.binary:
            out.append(f"skipped {len(self.binary)} binary file(s): {some(self.binary)}")
        if self.not_regular:
            out.append(
                f"skipped {len(self.not_regular)} symbolic link(s) or special file(s), never followed: "
                f"{some(self.not_regular)}"
            )
        if self.unreadable:
            out.append(
                f"skipped {len(self.unreadable)} file(s) that could not be read: {some(self.unreadable)}"
            )
        if self.long_lines:
            out.append(
                f"{len(self.long_lines)} line(s) longer than {line_max} bytes were searched in their "
                f"first {line_max} bytes only: {some(self.long_lines)}"
            )
        return out


class Grep(Tool):
    """Search file contents with a regular expression (Python syntax). Prints path:line: text."""

    name = "grep"
    policy = "auto"
    read_only = True

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

    def _files(self, ctx: ToolContext, args: Any, notes: WalkNotes, skipped: _Skipped) -> Any:
        """The files to search, lazily (the walk runs inside the call's budget too)."""
        ws = ctx.workspace
        target = ws.resolve(args.path)
        base_rel = ws.relative(args.path)
        if not target.is_dir():
            yield base_rel
            return
        match = _matcher(args.glob, ctx) if args.glob else None
        for e in ws.iter_entries(args.path, notes=notes):
            if e.kind == "dir" or (match is not None and not match(_under(base_rel, e.path))):
                continue
            if e.kind == "file":
                yield e.path
            else:
                skipped.not_regular.append(e.path)

    def _search_file(
        self, ctx: ToolContext, search: _LineSearch, rel: str, skipped: _Skipped, *, only: bool
    ) -> str | None:
        """Add the matching lines of one file to `search.hits`. The file is streamed in blocks of
        lines, so a file of any size is searched in bounded memory. "cut" when one more match than
        the cap was found, "stopped" when the call must end (cancelled, out of time), else None."""
        line_max = ctx.limits.grep_max_line_bytes
        try:
            rel, f, _ = ctx.workspace.open_read(rel)
        except WorkspaceError as e:
            if only:
                raise
            skipped.unreadable.append(str(e))  # a FIFO, a link swapped in, a file that vanished
            return None
        with f:
            try:
                if b"\x00" in f.read(_SNIFF):
                    skipped.binary.append(rel)
                    return None
                f.seek(0)
                first = 1  # line number of the block's first line
                for text, cut in _line_blocks(f, line_max, ctx.stop_reason):
                    skipped.long_lines += [f"{rel}:{first + i}" for i in cut]
                    if end := search.block(rel, first, text):
                        return end
                    first += text.count("\n") + 1
            except TimeoutError:  # an OSError too: the budget ran out inside a match, not a read error
                return "stopped"
            except OSError as e:
                if only:
                    raise ToolError(f"{rel} could not be read: {e.strerror or e}") from None
                skipped.unreadable.append(f"{rel}: {e.strerror or e}")
        return "stopped" if ctx.stop_reason() else None

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        try:
            rx = regex.compile(args.pattern, regex.IGNORECASE if args.ignore_case else 0)
        except regex.error as e:
            raise ToolError(f"invalid regular expression {args.pattern!r}: {e}") from None
        search = _LineSearch(ctx, rx, args.pattern, min(args.max_results, ctx.limits.grep_max_results))
        hits, cap = search.hits, search.cap
        notes, skipped = WalkNotes(), _Skipped()
        only = not ctx.workspace.resolve(args.path).is_dir()
        end = None
        try:
            for rel in self._files(ctx, args, notes, skipped):
                end = (
                    "stopped"
                    if ctx.stop_reason()
                    else self._search_file(ctx, search, rel, skipped, only=only)
                )
                if end:
                    break
        except TimeoutError:
            end = "stopped"  # the budget ran out inside a match
        cut = end == "cut"
        stopped = _stopped(ctx, "narrow the path, the glob or the pattern") if end == "stopped" else None
        text = "\n".join(hits) if hits else f"no matches for {args.pattern!r}"
        if cut:
            text += f"\n[cut at {cap} matches: narrow the search]"
        text += _footer(notes, stopped, skipped.lines(ctx.limits.grep_max_line_bytes))
        data = {
            "matches": hits,
            "truncated": cut or stopped is not None,
            "skipped": {
                "binary": skipped.binary,
                "not_regular": skipped.not_regular,
                "unreadable": skipped.unreadable,
                "long_lines": skipped.long_lines,
                "too_deep": notes.too_deep,
            },
        }
        return ToolResult(text, data=data)
