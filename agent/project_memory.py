"""Project memory: the AGENTS.md files of the workspace, read when a session starts and put in its
system prompt.

Which files: AGENTS.md in the workspace and in each parent folder up to the root of the git repository
the workspace is in, the outermost first (so the nearest, most specific one is read last); outside a
git repository, the workspace's own AGENTS.md only. They are read at most `max_bytes` in all
(`project_memory_max_bytes` in the settings, 32 KiB by default; 0 reads none): a file that does not
fit is cut with a note the model reads too.

The model's state *is* the context, so a session keeps the text it started with: what was loaded
(paths, each file's SHA-256 and size, a digest over them) is recorded in the session's system event,
and a resume compares it with the files now on disk. `/memory reload` sends the new text as a message,
and that message's event records it, so the comparison after it is against the new text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

MEMORY_FILE = "AGENTS.md"
DEFAULT_PROJECT_MEMORY_MAX_BYTES = 32 << 10
MAX_PARENTS = 64  # folders walked up looking for the git root
# What introduces the files' text in the system prompt, and in the message of a `/memory reload`.
HEADING = f"\n\n# Project instructions ({MEMORY_FILE})\n\n"
RELOAD_INTRO = (
    f"The project instructions ({MEMORY_FILE}) changed since this session started. They now read:\n\n"
)


@dataclass(frozen=True)
class MemoryFile:
    path: str  # absolute
    sha256: str  # of the whole file, so a change past the cut is seen too
    size: int
    text: str  # what the model reads: the file, or its first part
    truncated: bool


@dataclass(frozen=True)
class ProjectMemory:
    files: tuple[MemoryFile, ...] = ()
    max_bytes: int = DEFAULT_PROJECT_MEMORY_MAX_BYTES

    @property
    def digest(self) -> str:
        """One hash over the files and their contents: equal digests, the same memory."""
        pairs = [[f.path, f.sha256] for f in self.files]
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

    def text(self) -> str:
        """The files as the model reads them, each under its path."""
        parts = []
        for f in self.files:
            cut = (
                f"\n[cut here: the file is {f.size:,} bytes, project memory is read up to "
                f"{self.max_bytes:,} (project_memory_max_bytes)]"
                if f.truncated
                else ""
            )
            parts.append(f"## {f.path}\n\n{f.text.rstrip()}{cut}")
        return "\n\n".join(parts)

    def prompt(self, system: str) -> str:
        """`system` with the project's instructions after it (unchanged when there are none)."""
        if not self.files:
            return system
        return f"{system}{HEADING}{self.text()}"

    def record(self) -> dict[str, Any]:
        """What a session's events keep of it (the text itself is in the prompt or message)."""
        return {
            "digest": self.digest,
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size, "truncated": f.truncated}
                for f in self.files
            ],
        }


def memory_folders(workspace: str | Path) -> list[Path]:
    """The folders whose AGENTS.md counts, outermost first: from the git root down to the workspace,
    or the workspace alone outside a repository."""
    here = Path(workspace).resolve()
    chain = [here]
    for parent in list(here.parents)[:MAX_PARENTS]:
        if (chain[-1] / ".git").exists():
            return chain[::-1]
        chain.append(parent)
    if (chain[-1] / ".git").exists():
        return chain[::-1]
    return [here]


def load_project_memory(
    workspace: str | Path, max_bytes: int = DEFAULT_PROJECT_MEMORY_MAX_BYTES
) -> ProjectMemory:
    """Read the AGENTS.md files of `workspace` (see the module's docstring), `max_bytes` of text in
    all. A file that cannot be read is left out (the session goes on without it)."""
    files: list[MemoryFile] = []
    left = max_bytes
    if max_bytes <= 0:
        return ProjectMemory((), max_bytes)
    for folder in memory_folders(workspace):
        path = folder / MEMORY_FILE
        try:
            if not path.is_file():
                continue
            read = _read(path, left)
        except OSError:
            continue
        if read is None:
            continue
        files.append(read)
        left -= len(read.text.encode())
        if left <= 0:
            break
    return ProjectMemory(tuple(files), max_bytes)


def _read(path: Path, limit: int) -> MemoryFile | None:
    """The file's hash over all of it (streamed) and its first `limit` bytes as text."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if len(head) < limit + 1:
                head += chunk[: limit + 1 - len(head)]
            digest.update(chunk)
            size += len(chunk)
    truncated = len(head) > limit
    text = head[:limit].decode("utf-8", errors="ignore" if truncated else "replace")
    if not text.strip() and not truncated:
        return None  # an empty AGENTS.md adds nothing
    return MemoryFile(str(path), digest.hexdigest(), size, text, truncated)


def recorded_memory(events: Iterable[Any]) -> tuple[dict[str, Any], str] | None:
    """What a session's model read of the project memory last, and its text: the record of its system
    event (the text: what follows the system prompt's heading) or of its last `/memory reload` message
    (the text: what follows the message's introduction). None: the session never read any, or it
    predates recording."""
    found = None
    for ev in events:
        data = getattr(ev, "data", None) or {}
        if ev.kind in ("system", "user") and "project_memory" in data:
            marker = HEADING if ev.kind == "system" else RELOAD_INTRO
            _, cut, text = ev.content.partition(marker)
            found = data["project_memory"], text if cut else ""
    return found


@dataclass(frozen=True)
class MemoryStatus:
    loaded: dict[str, Any] | None  # the session's record; None before its first turn
    current: ProjectMemory  # the files on disk now
    loaded_text: str = ""  # the text the session's model read

    @property
    def changed(self) -> bool:
        """The files differ from what the session's model read (a session before its first turn
        reads the current ones, so it has nothing to be behind)."""
        if self.loaded is None:
            return False
        return str(self.loaded.get("digest")) != self.current.digest


def describe(status: MemoryStatus, max_chars: int = 2000) -> str:
    """`/memory`: the files and the text the session's model read, and, when they changed since, the
    text now on disk (each shown up to `max_chars`)."""

    def shown(text: str) -> list[str]:
        return ["", text if len(text) <= max_chars else text[:max_chars] + "\n…"] if text else []

    def listed(files: list[dict[str, Any]]) -> list[str]:
        return [
            f"  {f['path']} ({f['size']:,} bytes{', cut' if f.get('truncated') else ''})" for f in files
        ] or [f"  (no {MEMORY_FILE})"]

    if status.loaded is None:
        lines = ["not loaded yet: the session's first message reads:"]
        lines += listed(status.current.record()["files"]) + shown(status.current.text())
        return "\n".join(lines)
    lines = ["read when the session started (or at its last /memory reload):"]
    lines += listed(status.loaded.get("files", [])) + shown(status.loaded_text)
    if status.changed:
        lines += ["", f"{MEMORY_FILE} changed since; /memory reload gives the model the new text:"]
        lines += listed(status.current.record()["files"]) + shown(status.current.text())
    return "\n".join(lines)


def reload_message(memory: ProjectMemory) -> str:
    """The message `/memory reload` sends: the new text, introduced as such."""
    if not memory.files:
        return f"The project's {MEMORY_FILE} files were removed: its earlier instructions no longer apply."
    return RELOAD_INTRO + memory.text()


class MemoryOps:
    """The project memory of the `Agent`'s session (a mixin, like agent/sessions.py's SessionOps)."""

    store: Any
    session_id: str
    workspace: Path
    project_memory_max_bytes: int
    _memory_reload: dict[str, Any] | None  # the record the next message carries (/memory reload)

    if TYPE_CHECKING:

        def _session_row(self, create: bool) -> str | None: ...  # agent/sessions.py

    def current_memory(self) -> ProjectMemory:
        """The AGENTS.md files on disk now, as a session starting now would read them."""
        return load_project_memory(self.workspace, self.project_memory_max_bytes)

    def memory_status(self) -> MemoryStatus:
        """What the session's model read of the project memory, against the files now. Reads the
        session's events: call it between turns, on the model thread, like the session operations."""
        found = None
        if self._session_row(False) is not None:
            found = recorded_memory(self.store.events(self.session_id))
        if found is None:
            return MemoryStatus(None, self.current_memory())
        return MemoryStatus(found[0], self.current_memory(), found[1])

    def memory_reload(self) -> str:
        """The message that gives the model the files' new text; the next message sent records them
        as what the session has read (send this one)."""
        current = self.current_memory()
        self._memory_reload = current.record()
        return reload_message(current)

    def _take_memory_reload(self) -> dict[str, Any] | None:
        record, self._memory_reload = self._memory_reload, None
        return record
