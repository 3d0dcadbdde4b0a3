"""The workspace: the one directory tree tools may touch.

Design choices:
- Containment is decided on the *resolved* path (every symlink followed, also in intermediate
  folders) compared component-wise with the resolved root; never by string prefix.
- Resolving is not enough on its own: between the check and the use a folder could be swapped for a
  symlink. So files are opened by walking the resolved relative path one component at a time from a
  descriptor of the root, each step with O_NOFOLLOW (openat-style). A symlink that appears after the
  check makes the walk fail instead of escaping.
- Writes go to a temp file in the target's folder and are renamed over the target: readers see the
  old or the new file, never half of one, and rename replaces a name without following it.
- Only regular files are read or written: FIFOs (a read would block forever), device files and
  sockets are refused before they are opened.
- `.git/` and the agent's own configuration folder are readable but never written by tools.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pathspec
from hybrid_agent.tools.errors import WorkspaceError
from hybrid_agent.tools.walk import WALK_MAX_DEPTH, Entry, WalkNotes, walk

PROTECTED_DIRS = (".git", ".hybrid-agent")
NAME_MAX = 255  # bytes per path component (Linux, macOS)
PATH_MAX = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SKIP_CHUNK = 1 << 16
# Called by a write with (relative path, previous bytes or None) right before the file changes.
BeforeWrite = Callable[[str, "bytes | None"], None]

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class Workspace:
    """A confined directory. Every method takes paths relative to the root (or absolute ones inside it)."""

    def __init__(self, root: str | os.PathLike[str], *, protected: tuple[str, ...] = PROTECTED_DIRS) -> None:
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise WorkspaceError(
                f"workspace {os.fspath(root)!r} is not a directory; create it or pick another"
            )
        self.root = Path(real)
        self.protected = frozenset(p.lower() for p in protected)
        # One lock per workspace: a write and its journal entry happen together, so the journal's order
        # is the order of the writes even when tool calls run in threads.
        self.lock = threading.RLock()

    # --- resolving ----------------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The absolute, symlink-free path of `path`; raises WorkspaceError if it leaves the workspace."""
        if not isinstance(path, str):
            raise WorkspaceError(f"a path must be a string, not {type(path).__name__}")
        if "\x00" in path:
            raise WorkspaceError(f"path {path!r} contains a NUL byte; refused")
        if not path.strip():
            path = "."
        for part in path.split("/"):
            if len(os.fsencode(part)) > NAME_MAX:
                raise WorkspaceError(
                    f"a name in the path is longer than {NAME_MAX} bytes: {part[:40]}...; refused"
                )
        joined = os.path.join(self.root, path)  # an absolute `path` replaces the root; checked below
        if len(os.fsencode(joined)) > PATH_MAX:
            raise WorkspaceError(f"path is longer than {PATH_MAX} bytes; refused")
        try:
            try:
                real = os.path.realpath(joined, strict=True)
            except (FileNotFoundError, NotADirectoryError):
                # A file about to be created: resolve the part that exists. (This can still raise when
                # a link vanishes between realpath's lstat and readlink, hence the outer handler.)
                real = os.path.realpath(joined)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise WorkspaceError(f"{path!r} runs into a symbolic link loop; refused") from None
            raise WorkspaceError(f"{path!r}: {e.strerror}") from None
        resolved = Path(real)
        if not resolved.is_relative_to(self.root):
            raise WorkspaceError(
                f"{path!r} resolves to {real}, outside the workspace {self.root}; "
                "tools may only use files inside it"
            )
        return resolved

    def relative(self, path: str) -> str:
        """The resolved path relative to the root, '/'-separated ('.' for the root itself)."""
        rel = self.resolve(path).relative_to(self.root)
        return rel.as_posix() if rel.parts else "."

    def _parts(self, path: str) -> tuple[str, ...]:
        return self.resolve(path).relative_to(self.root).parts

    def is_protected(self, rel: str) -> bool:
        return any(p.lower() in self.protected for p in rel.split("/"))

    def _check_writable(self, parts: tuple[str, ...]) -> str:
        rel = "/".join(parts)
        if not parts:
            raise WorkspaceError("the workspace root itself cannot be written; name a file inside it")
        for p in parts:
            if p.lower() in self.protected:
                raise WorkspaceError(f"{rel} is inside {p}/, which tools may read but not change")
        return rel

    # --- descriptor walking -------------------------------------------------------------------------

    def _os_error(self, rel: str, e: OSError) -> WorkspaceError:
        if e.errno == errno.ELOOP:
            return WorkspaceError(f"{rel} is a symbolic link that changed or loops; refused")
        if e.errno == errno.ENOTDIR:
            return WorkspaceError(f"{rel}: a part of this path is not a directory")
        if e.errno == errno.ENOENT:
            return WorkspaceError(f"{rel} does not exist")
        if e.errno == errno.ENAMETOOLONG:
            return WorkspaceError(f"{rel}: name too long")
        if e.errno == errno.EISDIR:
            return WorkspaceError(f"{rel} is a directory")
        return WorkspaceError(f"{rel}: {e.strerror or e}")

    def _open_dir(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        """A descriptor of the folder `parts` (relative to the root), walked without following links."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                rel = "/".join(parts[: i + 1])
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise WorkspaceError(f"{rel} does not exist") from None
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)  # mkdirat never follows a link at `part`
                    except FileExistsError:
                        pass
                    except OSError as e:
                        raise self._os_error(rel, e) from None
                    try:
                        nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as e:
                        raise self._os_error(rel, e) from None
                except OSError as e:
                    raise self._os_error(rel, e) from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_regular(self, dfd: int, name: str, rel: str) -> tuple[int, os.stat_result] | None:
        """Open `name` in folder `dfd` for reading if it is a regular file; None if it does not exist."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._os_error(rel, e) from None
        # Checked before opening: opening a device can have effects of its own.
        if not stat.S_ISREG(st.st_mode):
            raise WorkspaceError(f"{rel} is {_kind(st.st_mode)}, not a regular file; refused")
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._os_error(rel, e) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
            os.close(fd)
            raise WorkspaceError(f"{rel} is {_kind(st.st_mode)}, not a regular file; refused")
        return fd, st

    # --- reading ------------------------------------------------------------------------------------

    def open_read(self, path: str) -> tuple[str, BinaryIO, int]:
        """(relative path, binary file object, size) of a regular file inside the workspace."""
        parts = self._parts(path)
        rel = "/".join(parts) or "."
        if not parts:
            raise WorkspaceError("that is the workspace directory itself; list it with list_dir")
        dfd = self._open_dir(parts[:-1])
        try:
            opened = self._open_regular(dfd, parts[-1], rel)
        finally:
            os.close(dfd)
        if opened is None:
            raise WorkspaceError(f"{rel} does not exist")
        fd, st = opened
        return rel, os.fdopen(fd, "rb"), st.st_size

    def read_bytes(self, path: str, *, max_bytes: int) -> tuple[str, bytes]:
        rel, f, size = self.open_read(path)
        with f:
            if size > max_bytes:
                raise WorkspaceError(f"{rel} is {size} bytes, over the limit of {max_bytes} bytes")
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise WorkspaceError(f"{rel} grew past the limit of {max_bytes} bytes while being read")
        return rel, data

    @staticmethod
    def iter_lines(
        f: BinaryIO, *, keep: int, stop: Callable[[], object] | None = None
    ) -> Iterator[tuple[bytes, int]]:
        """(head, length) of each line of `f`: its first `keep` bytes (newline included when it fits)
        and its length in bytes, newline not counted. The rest of a longer line is skipped in bounded
        chunks, so memory stays O(keep) however long a line is (a minified file can be one 100 MB
        line). `stop`, checked between chunks of a long line, ends the iteration early when truthy."""
        while head := f.readline(keep):
            length = len(head)
            if head.endswith(b"\n"):
                length -= 1
            elif length == keep:
                while part := f.readline(_SKIP_CHUNK):
                    length += len(part)
                    if part.endswith(b"\n"):
                        length -= 1
                        break
                    if stop is not None and stop():
                        return
            yield head, length

    def exists(self, path: str) -> bool:
        try:
            return self.resolve(path).exists()
        except WorkspaceError:
            return False

    # --- writing ------------------------------------------------------------------------------------

    def _current(self, dfd: int, name: str, rel: str, journal_max_bytes: int) -> bytes | None:
        opened = self._open_regular(dfd, name, rel)
        if opened is None:
            return None
        fd, st = opened
        with os.fdopen(fd, "rb") as f:
            data = f.read(journal_max_bytes + 1) if st.st_size <= journal_max_bytes else b""
        if st.st_size > journal_max_bytes or len(data) > journal_max_bytes:
            raise WorkspaceError(
                f"{rel} is over {journal_max_bytes} bytes, too large to keep an undo copy of; not changed"
            )
        return data

    def write_bytes(
        self, path: str, data: bytes, *, journal_max_bytes: int, before_write: BeforeWrite | None = None
    ) -> tuple[str, bytes | None]:
        """Atomically replace (or create) a file. Returns (relative path, previous content or None).
        `before_write(rel, previous)` runs once the previous content is read, before anything changes
        (a journal records the change ahead of it there)."""
        parts = self._parts(path)
        rel = self._check_writable(parts)
        name = parts[-1]
        with self.lock:
            dfd = self._open_dir(parts[:-1], create=True)
            try:
                before = self._current(dfd, name, rel, journal_max_bytes)
                mode = None
                if before is not None:
                    mode = stat.S_IMODE(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
                if before_write is not None:
                    before_write(rel, before)
                # Keep the temp name within NAME_MAX whatever the target's length.
                tmp = f".{name[:180]}.{secrets.token_hex(8)}.tmp"
                fd = os.open(tmp, _TMP_FLAGS, 0o666, dir_fd=dfd)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                        f.flush()
                        if mode is not None:
                            os.fchmod(f.fileno(), mode)
                        os.fsync(f.fileno())
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dfd)
                    raise
            except OSError as e:
                raise self._os_error(rel, e) from None
            finally:
                os.close(dfd)
        return rel, before

    def delete(
        self, path: str, *, journal_max_bytes: int, before_write: BeforeWrite | None = None
    ) -> tuple[str, bytes | None]:
        """Delete a regular file. Returns (relative path, its content before). `before_write`: as in
        `write_bytes`."""
        parts = self._parts(path)
        rel = self._check_writable(parts)
        with self.lock:
            dfd = self._open_dir(parts[:-1])
            try:
                before = self._current(dfd, parts[-1], rel, journal_max_bytes)
                if before is None:
                    raise WorkspaceError(f"{rel} does not exist")
                if before_write is not None:
                    before_write(rel, before)
                os.unlink(parts[-1], dir_fd=dfd)  # unlink removes the name; it never follows a link
            except OSError as e:
                raise self._os_error(rel, e) from None
            finally:
                os.close(dfd)
        return rel, before

    # --- listing ------------------------------------------------------------------------------------

    def _gitignore(self, fd: int, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        """The .gitignore of the open folder `fd`, or None (absent, not a regular file, unreadable)."""
        name = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
        try:
            opened = self._open_regular(fd, ".gitignore", name)
            if opened is None:
                return None
            with os.fdopen(opened[0], "rb") as f:
                data = f.read(1 << 20)
        except (WorkspaceError, OSError):
            return None
        return pathspec.GitIgnoreSpec.from_lines(data.decode("utf-8", "replace").splitlines())

    def iter_entries(
        self,
        start: str = ".",
        *,
        recursive: bool = True,
        gitignore: bool = True,
        max_depth: int | None = None,
        notes: WalkNotes | None = None,
    ) -> Iterator[Entry]:
        """Entries under `start`, sorted per folder, skipping `.git` and (optionally) ignored paths;
        links are listed, never followed. At most WALK_MAX_DEPTH (and `max_depth`) levels deep; what
        the walk left out is recorded in `notes` (see tools/walk.py)."""
        base = self.resolve(start)
        if not base.is_dir():
            raise WorkspaceError(f"{self.relative(start)} is not a directory")
        parts = base.relative_to(self.root).parts
        limit = WALK_MAX_DEPTH if max_depth is None else min(max_depth, WALK_MAX_DEPTH)
        notes = notes if notes is not None else WalkNotes()
        yield from walk(
            self.root,
            parts,
            recursive=recursive,
            gitignore=gitignore,
            limit=limit,
            notes=notes,
            read_gitignore=self._gitignore,
        )
