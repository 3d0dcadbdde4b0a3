"""`@path` in a message attaches that workspace file's text for the model to read with the message.

The rule, so that an email address, a decorator or a handle never misfires: a mention is an `@` at the
start of the message or after a space or an opening bracket or quote, followed by a path (no spaces)
that names an existing file. `a@b.com` (no space before the `@`), `@property` and `@alice` (no such
file) stay text, and so does everything in code: fenced blocks and `inline code` are skipped. Trailing
punctuation (`see @notes.md.`) is dropped when the path without it is the file.

Files are read through the tools' `Workspace` (tools/workspace.py): resolved with symlinks followed
and refused outside the workspace, then opened one component at a time with O_NOFOLLOW. A file over
`max_bytes` (`mention_max_bytes` in the settings, 64 KiB by default) is cut there with a note; a
mention outside the workspace, of a folder, or of a file that is not UTF-8 text attaches nothing and
says why, in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hybrid_agent.agent.events import MentionNotice

DEFAULT_MENTION_MAX_BYTES = 64 << 10
MAX_MENTIONS = 20  # per message: each may bring max_bytes
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)  # fenced blocks (even unclosed), inline code
_MENTION = re.compile(r"(?:^|(?<=[\s(\[{\"']))@(?P<path>[^\s`\"'<>|]+)")
_TRAILING = ".,;:!?)]}"


@dataclass(frozen=True)
class Attachment:
    path: str  # relative to the workspace, '/'-separated
    text: str
    size: int  # the file's bytes
    truncated: bool


@dataclass
class Mentions:
    """What a message's mentions attached, and one note per mention that attached nothing or was cut."""

    attachments: list[Attachment] = field(default_factory=list)
    notes: list[tuple[str, bool, str]] = field(default_factory=list)  # (path, attached, what happened)

    def context(self) -> str:
        """The attachments as the model reads them, before the message (agent/records.py)."""
        return "\n\n".join(_block(a) for a in self.attachments)

    def events(self) -> list[MentionNotice]:
        """One event per attached file, then one per note, for the UI and `run` to show."""
        done = [
            MentionNotice(path=a.path, attached=True, message=f"attached @{a.path} ({a.size:,} bytes)")
            for a in self.attachments
            if not a.truncated  # a cut file has its note
        ]
        return done + [MentionNotice(path=path, attached=ok, message=note) for path, ok, note in self.notes]

    def records(self) -> list[dict[str, Any]]:
        """What the user event records of them (no text: that is in the event's context)."""
        return [{"path": a.path, "size": a.size, "truncated": a.truncated} for a in self.attachments]


def _block(a: Attachment) -> str:
    longest = max((len(run) for run in re.findall(r"`+", a.text)), default=0)
    fence = "`" * max(3, longest + 1)  # a fence the file's own backticks cannot close
    cut = f", cut to its first {len(a.text.encode()):,}" if a.truncated else ""
    end = "" if a.text.endswith("\n") else "\n"
    return f"File @{a.path} ({a.size:,} bytes{cut}):\n{fence}\n{a.text}{end}{fence}"


def candidates(text: str) -> list[str]:
    """The `@path` words of `text` outside code, in order, each once (trailing punctuation kept:
    `expand` decides whether the file has it)."""
    masked = _CODE.sub(lambda m: " " * len(m.group()), text)
    seen: dict[str, None] = {}
    for m in _MENTION.finditer(masked):
        seen.setdefault(m.group("path"), None)
    return list(seen)


def expand(text: str, workspace: Any, max_bytes: int = DEFAULT_MENTION_MAX_BYTES) -> Mentions:
    """Read the files `text` mentions from `workspace` (a tools `Workspace`)."""
    from hybrid_agent.tools.errors import WorkspaceError

    found = Mentions()
    done: set[str] = set()
    for word in candidates(text):
        path = _existing(word, workspace)
        if path is None:
            continue  # not a file: an @handle, a decorator, a typo; the text goes as it is
        try:
            rel = workspace.relative(path)
        except WorkspaceError:
            found.notes.append(
                (
                    path,
                    False,
                    f"@{path} is outside the workspace; not attached (tools may only read inside it)",
                )
            )
            continue
        if rel in done:
            continue
        if len(done) == MAX_MENTIONS:
            found.notes.append(
                (rel, False, f"@{rel}: not attached, a message attaches at most {MAX_MENTIONS} files")
            )
            continue
        done.add(rel)
        try:
            attachment = _read(workspace, rel, max_bytes)
        except (WorkspaceError, OSError) as exc:
            found.notes.append((rel, False, f"@{rel}: not attached ({exc})"))
            continue
        if attachment is None:
            found.notes.append((rel, False, f"@{rel} is not UTF-8 text; not attached"))
            continue
        found.attachments.append(attachment)
        if attachment.truncated:
            what = (
                f"@{rel} is {attachment.size:,} bytes: attached its first {max_bytes:,} (mention_max_bytes)"
            )
            found.notes.append((rel, True, what))
    return found


def _existing(word: str, workspace: Any) -> str | None:
    """`word`, or `word` without trailing punctuation, when it names something that exists (inside
    the workspace or not: one outside gets a note, not silence)."""
    from pathlib import Path

    while word:
        where = Path(word).expanduser()
        where = where if where.is_absolute() else workspace.root / where
        try:
            if where.exists():
                return word
        except OSError:
            return None
        if word[-1] not in _TRAILING:
            return None
        word = word[:-1]
    return None


def _read(workspace: Any, rel: str, max_bytes: int) -> Attachment | None:
    """The file's first `max_bytes` as text (cut at a character boundary); None when not UTF-8."""
    _, f, size = workspace.open_read(rel)
    with f:
        data = f.read(max_bytes + 1)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (truncated and exc.start >= len(data) - 3):  # only a character the cut split is fine
            return None
        text = data[: exc.start].decode("utf-8")
    if "\x00" in text:
        return None
    return Attachment(rel, text, max(size, len(data)), truncated)


# ---- completion (the UI completes `@` words from the workspace's files) ----------------------------
MAX_COMPLETION_PATHS = 20_000  # a walk of a huge tree stops here: completion is a convenience


def workspace_paths(workspace: Any, limit: int = MAX_COMPLETION_PATHS) -> list[str]:
    """The workspace's files and folders (folders with a trailing '/'), .gitignore'd ones and `.git`
    left out, sorted; at most `limit` of them."""
    from itertools import islice

    entries = islice(workspace.iter_entries(".", recursive=True, gitignore=True), limit)
    return sorted(e.path + ("/" if e.kind == "dir" else "") for e in entries if e.kind in ("file", "dir"))


def mention_at(text: str, cursor: int) -> tuple[int, str] | None:
    """(where the `@` of the word ending at the cursor is, what follows it up to the cursor), when
    that word is a mention by the rule above (`@` first, or after an opening bracket or quote)."""
    start = cursor
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while start < cursor and text[start] in "([{\"'":
        start += 1
    if start == cursor or text[start] != "@":
        return None
    return start, text[start + 1 : cursor]


def complete_path(paths: list[str], prefix: str) -> list[str]:
    """The paths that continue `prefix` one level, in order: `src/` for `s`, `src/app.py` for `src/a`."""
    out: dict[str, None] = {}
    for path in paths:
        if path.startswith(prefix) and path != prefix:
            cut = path.find("/", len(prefix))
            out.setdefault(path if cut < 0 else path[: cut + 1], None)
    return list(out)
