"""A session's file changes as a unified diff, read from its undo journal (no git needed).

`sessions diff ID` and the UI's `/diff` print it. Only live changes count: a change that was undone (or
never made, agent/journal.py) is left out, so the diff goes from the files before the session's first
change to the files as the agent left them. With a turn, only that turn's live changes.

The session also records the git commit its workspace was on when it started (`git_head`), so that
`git diff` from that commit shows the same changes plus anyone else's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from hybrid_agent.tools.journal import ChangeRecord

# A file's bytes that are not text: a NUL byte (as git decides) or not UTF-8.
_BINARY_PROBE = 8000
_REF_MAX = 4096  # bytes of a HEAD, ref or .git file that are read
_PACKED_MAX = 64 << 20
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _text(data: bytes | None) -> list[str] | None:
    """The file's lines for difflib, [] for an absent file; None when the bytes are not text."""
    if data is None:
        return []
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def file_diff(path: str, before: bytes | None, after: bytes | None) -> str:
    """One file's unified diff, with git's headers (/dev/null for an absent side)."""
    if before == after:
        return ""
    old = "/dev/null" if before is None else f"a/{path}"
    new = "/dev/null" if after is None else f"b/{path}"
    head = f"diff --git a/{path} b/{path}\n"
    if before is None:
        head += "new file mode 100644\n"
    elif after is None:
        head += "deleted file mode 100644\n"
    a, b = _text(before), _text(after)
    if a is None or b is None:
        return head + f"Binary files {old} and {new} differ\n"
    lines = []
    for line in difflib.unified_diff(a, b, old, new):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return head + "".join(lines)


Change = tuple[bytes | None, bytes | None]  # a file's bytes before and after (None: absent)


def net_changes(changes: Sequence[ChangeRecord], turn: int | None = None) -> dict[str, Change]:
    """Per path (sorted), the bytes before the first live change and after the last one, of the whole
    session or of `turn`; paths that ended where they started are left out."""
    first: dict[str, bytes | None] = {}
    last: dict[str, bytes | None] = {}
    for c in changes:
        if c.reverted or (turn is not None and c.turn != turn):
            continue
        first.setdefault(c.path, c.before)
        last[c.path] = c.after
    return {p: (first[p], last[p]) for p in sorted(first) if first[p] != last[p]}


def session_diff(changes: Sequence[ChangeRecord], turn: int | None = None) -> str:
    """The unified diff of `changes` (a journal's entries, oldest first); "" when nothing changed."""
    return "".join(file_diff(p, a, b) for p, (a, b) in net_changes(changes, turn).items())


def _git_dir(folder: Path) -> Path | None:
    """The git directory of the checkout `folder` is in: `.git`, or where a worktree's `.git` file
    points."""
    for d in (folder, *folder.parents):
        dot = d / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(encoding="utf-8", errors="replace")[:_REF_MAX].strip()
            if text.startswith("gitdir:"):
                found = Path(text.removeprefix("gitdir:").strip())
                return found if found.is_absolute() else (d / found).resolve()
            return None
    return None


def _ref(git_dir: Path, name: str) -> str | None:
    """The commit a ref names: its loose file, else its line in packed-refs (in the common dir of a
    worktree too)."""
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        shared = common.read_text(encoding="utf-8", errors="replace")[:_REF_MAX].strip()
        dirs.append((git_dir / shared).resolve())
    for d in dirs:
        loose = d / name
        if loose.is_file():
            return loose.read_text(encoding="utf-8", errors="replace")[:_REF_MAX].strip()
    for d in dirs:
        packed = d / "packed-refs"
        if packed.is_file() and packed.stat().st_size <= _PACKED_MAX:
            for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
                sha, _, ref = line.partition(" ")
                if ref == name:
                    return sha
    return None


def git_head(folder: str | Path) -> str | None:
    """The commit `folder`'s git checkout is on, or None (not a checkout, no commit yet). Read from the
    files under .git, not by running git: a repository's own config can make git run programs."""
    try:
        git_dir = _git_dir(Path(folder).resolve())
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text(encoding="utf-8", errors="replace")[:_REF_MAX].strip()
        if head.startswith("ref:"):
            head = _ref(git_dir, head.removeprefix("ref:").strip()) or ""
    except OSError:
        return None
    return head if _SHA.fullmatch(head) else None
