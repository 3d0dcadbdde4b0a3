"""Walking a folder tree of the workspace: linear in the number of entries, bounded in depth, and
saying what it left out (`WalkNotes`), so a tool never answers as if it saw everything.

`Workspace.iter_entries` (tools/workspace.py) resolves and checks the starting folder, then walks
from it with `walk`; the .gitignore reader is the workspace's (regular files inside the tree only).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# (open folder descriptor, its path relative to the root) -> its .gitignore rules, or None.
ReadGitignore = Callable[[int, str], "pathspec.GitIgnoreSpec | None"]
Rules = tuple[tuple[str, pathspec.GitIgnoreSpec], ...]


@dataclass(frozen=True)
class Entry:
    """One item of a listing; `path` is relative to the workspace root, '/'-separated."""

    path: str
    kind: str  # "file", "dir", "link", "other"
    size: int
    mtime_ns: int
    inode: int = 0


def walk(
    root: Path,
    parts: tuple[str, ...],
    *,
    recursive: bool,
    gitignore: bool,
    limit: int,
    notes: WalkNotes,
    read_gitignore: ReadGitignore,
) -> Iterator[Entry]:
    """Entries under the folder `parts` of `root`, sorted per folder, skipping `.git` and (with
    `gitignore`) ignored paths; links are listed, never followed.

    The walk holds one descriptor per folder on the current path and opens each sub-folder relative
    to its parent (O_NOFOLLOW), so its cost is linear in the number of entries, not in depth squared.
    It never goes below `limit` levels; folders it did not enter because of WALK_MAX_DEPTH, or could
    not open, are recorded in `notes`."""
    # The .gitignore files of the folders above `start` apply too: collect them on the way down.
    rules: Rules = ()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i in range(len(parts) + 1):
            if gitignore:
                rel_dir = "/".join(parts[:i])
                spec = read_gitignore(fd, rel_dir)
                if spec is not None:
                    rules += ((rel_dir, spec),)
            if i < len(parts):
                nfd = os.open(parts[i], _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
    except OSError:
        os.close(fd)
        return  # swapped for a link or removed since it was resolved: nothing to list
    # One frame per open folder on the current path: (descriptor, path, depth of its entries,
    # ignore rules in force, sub-folders still to visit).
    frames: list[tuple[int, str, int, Rules, Iterator[str]]] = []
    rel_dir, depth, new_fd = "/".join(parts), 1, fd
    try:
        while True:
            if new_fd is not None:
                subdirs: list[str] = []
                try:
                    listing = _scan_fd(new_fd)
                except OSError as e:
                    listing = []
                    notes.unreadable.append(f"{rel_dir or '.'}: {e.strerror or e}")
                for name, st in listing:
                    if name == ".git":
                        continue
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if gitignore and _ignored(rules, rel, is_dir):
                        continue
                    yield Entry(rel, _entry_kind(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
                    if is_dir and recursive:
                        if depth < limit:
                            subdirs.append(name)
                        elif depth >= WALK_MAX_DEPTH:
                            notes.too_deep.append(rel)
                frames.append((new_fd, rel_dir, depth, rules, iter(subdirs)))
                new_fd = None
            if not frames:
                return
            top_fd, top_rel, top_depth, top_rules, pending = frames[-1]
            name = next(pending, None)
            if name is None:
                os.close(top_fd)
                frames.pop()
                continue
            rel_dir = f"{top_rel}/{name}" if top_rel else name
            try:
                new_fd = os.open(name, _DIR_FLAGS, dir_fd=top_fd)
            except OSError as e:
                notes.unreadable.append(f"{rel_dir}: {e.strerror or e}")
                continue
            depth, rules = top_depth + 1, top_rules
            if gitignore:
                spec = read_gitignore(new_fd, rel_dir)
                if spec is not None:
                    rules += ((rel_dir, spec),)
    finally:
        if new_fd is not None:
            os.close(new_fd)
        for frame in frames:
            os.close(frame[0])


def _scan_fd(fd: int) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of the entries of the open folder `fd`, sorted by name."""
    out = []
    with os.scandir(fd) as it:
        for d in it:
            try:
                out.append((d.name, os.stat(d.name, dir_fd=fd, follow_symlinks=False)))
            except OSError:
                continue  # vanished between the listing and the stat
    return sorted(out, key=lambda item: item[0])


WALK_MAX_DEPTH = 100  # folders below this many levels are not walked (and the walk says so)


@dataclass
class WalkNotes:
    """What a walk left out, so that a tool can say so instead of answering as if it saw everything."""

    too_deep: list[str] = field(default_factory=list)  # folders at WALK_MAX_DEPTH not entered
    unreadable: list[str] = field(default_factory=list)  # "path: reason" of folders not listed

    def lines(self, shown: int = 3) -> list[str]:
        """One line per kind of omission, naming the first `shown` paths."""
        out = []
        if self.too_deep:
            out.append(
                f"{len(self.too_deep)} folder(s) deeper than {WALK_MAX_DEPTH} levels were not entered: "
                f"{_some(self.too_deep, shown)}; start from a deeper path to see inside them"
            )
        if self.unreadable:
            out.append(
                f"{len(self.unreadable)} folder(s) could not be listed: {_some(self.unreadable, shown)}"
            )
        return out


def _some(items: list[str], shown: int) -> str:
    """The first `shown` items, each cut to 120 characters (deep paths are long), then a count."""
    cut = [p if len(p) <= 120 else p[:57] + "..." + p[-60:] for p in items[:shown]]
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(cut) + more


def _entry_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "link" if stat.S_ISLNK(mode) else "other"


def _ignored(rules: Rules, rel: str, is_dir: bool) -> bool:
    """Whether a .gitignore of a folder above `rel` (those in `rules`) ignores it. Only folders that
    have a .gitignore are in `rules`, so this costs one match per such folder, not one per level."""
    for rel_dir, spec in rules:
        sub = rel[len(rel_dir) + 1 :] if rel_dir else rel
        if spec.match_file(sub + "/" if is_dir else sub):
            return True
    return False
