"""The sandbox `run_command` runs in: bubblewrap (`bwrap`) namespaces around the shell.

Modes (`SandboxPolicy.mode`):
- `workspace-write` (the default): the whole filesystem is mounted read-only, the workspace is the one
  writable tree (besides a private, empty /tmp);
- `read-only`: the workspace is read-only too;
- `off`: the command runs unconfined, with the user's full rights.

In both confined modes /dev and /proc are fresh private mounts, the user's home folder is hidden behind
an empty tmpfs (so `~/.ssh`, `~/.aws`, browser profiles... cannot be read) except the paths listed in
`allow_read` (mounted back read-only), the per-user runtime folder (`$XDG_RUNTIME_DIR`, where agent and
D-Bus sockets live) is hidden the same way, the sockets of system services (Docker, D-Bus...) are
covered, and the network is a private namespace with only its own loopback unless `network` is true.
The workspace's `.hybrid-agent/` folder, when it exists, stays read-only: a command must not be able
to rewrite the settings that confine it. So do the git repository's hooks folder, its `config` (and
its submodules' under `.git/modules`) and a `core.hooksPath` folder inside the workspace
(`git_protected`): git runs what they name later, outside the sandbox, when the user commits. A hooks
folder (or hooksPath folder) that does not exist yet is made empty first, and a missing `config` made
empty, so that the command cannot create them either; the folders above them are mount points, so
they cannot be renamed away. The rest of `.git` stays writable (`git commit` works in the sandbox).

Processes: the command has a pid namespace of its own (it sees and signals only its own processes).
`run_command` starts bwrap in a new session (no controlling terminal, which is what bwrap's
`--new-session` guards against: a command cannot push keystrokes into the user's terminal), and bwrap,
its init and the command share that one process group, so a timeout still kills every process of the
command. `--new-session` itself would move the command into a group of its own, out of that reach, so
it is not used.

If bwrap is not installed, confined commands are refused with one line saying so (logged once per
process); mode `off` runs them as before.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from hybrid_agent.tools.errors import ToolError

SandboxMode = Literal["workspace-write", "read-only", "off"]
SANDBOX_MODES: tuple[str, ...] = get_args(SandboxMode)

BWRAP_MISSING = (
    "run_command is sandboxed with bubblewrap, which is not installed: install it (Debian/Ubuntu: "
    '`apt install bubblewrap`) or set sandbox = "off" to run commands unconfined'
)
SANDBOX_FAILED = (
    "the sandbox (bubblewrap) could not start, so the command did not run (its message is above); "
    'fix that, or set sandbox = "off" to run commands unconfined'
)

_OUTPUT_INSIDE = "/tmp/.hybrid-agent-output"  # where an OutputChannel's FIFO is bound in the sandbox

# Folders inside the workspace a confined command may read but not change.
_READ_ONLY_IN_WORKSPACE = (".hybrid-agent",)
# Unix sockets of system services. A read-only mount does not stop a connect(), and a private network
# namespace does not cover path sockets: each one found is covered with /dev/null (the Docker socket
# alone would hand out root).
SERVICE_SOCKETS: tuple[str, ...] = (
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/dbus/system_bus_socket",
    "/run/snapd.socket",
    "/run/snapd-snap.socket",
)

_log = logging.getLogger(__name__)
_warned_missing: set[str] = set()


class SandboxUnavailable(ToolError):
    """The policy asks for a sandbox this machine cannot provide (bwrap is missing)."""


@dataclass(frozen=True)
class SandboxPolicy:
    """How `run_command` confines a command. `bwrap` names the executable; None looks it up on PATH."""

    mode: SandboxMode = "workspace-write"
    network: bool = False
    allow_read: tuple[str, ...] = field(default=())
    bwrap: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SANDBOX_MODES:
            raise ValueError(f"sandbox mode must be one of {', '.join(SANDBOX_MODES)}, not {self.mode!r}")
        if isinstance(self.allow_read, str | os.PathLike):
            raise ValueError("allow_read is a list of paths, not one path")
        object.__setattr__(self, "allow_read", tuple(os.fspath(p) for p in self.allow_read))

    @property
    def confined(self) -> bool:
        return self.mode != "off"


def find_bwrap(policy: SandboxPolicy) -> str | None:
    """The bwrap executable the policy uses, or None when it is not there."""
    if policy.bwrap is not None:
        p = policy.bwrap
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None
    return shutil.which("bwrap")


def sandbox_problem(policy: SandboxPolicy) -> str | None:
    """Why commands cannot run under `policy` on this machine (one line), or None when they can. The
    first time a given bwrap (or PATH) is found missing, the line is also logged as a warning."""
    if not policy.confined or find_bwrap(policy) is not None:
        return None
    key = policy.bwrap or "PATH"
    if key not in _warned_missing:
        _warned_missing.add(key)
        _log.warning(BWRAP_MISSING)
    return BWRAP_MISSING


def _real_dir(path: str | None) -> str | None:
    if not path:
        return None
    real = os.path.realpath(os.path.expanduser(path))
    return real if os.path.isdir(real) and real != "/" else None


def _bind_pairs(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(source, destination) for each existing path: the source resolved, the destination as written
    (absolute), so a path reached through a symlink in the hidden home is found where it is named."""
    out = []
    for p in paths:
        shown = os.path.abspath(os.path.expanduser(p))
        real = os.path.realpath(shown)
        if os.path.exists(real):
            out.append((real, shown))
            if real != shown:
                out.append((real, real))
    return out


def _sockets(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        real = os.path.realpath(p)
        try:
            if stat.S_ISSOCK(os.stat(real).st_mode) and real not in out:
                out.append(real)
        except OSError:
            continue
    return out


class OutputChannel:
    """Where a sandboxed command's output goes: a FIFO in a private folder, bound into the sandbox.

    Why not bwrap's own stdout: bwrap's init (pid 1 of the command's pid namespace) inherits it and
    keeps it open until the last process of the namespace is gone, so the output would never end
    while a daemon the command started (`cmd > log 2>&1 &`) runs, and that daemon would be stopped as
    one still writing. The command's shell opens the FIFO itself, so only the processes that really
    write the output hold it. The caller holds a write end too until bwrap exits (a FIFO with no
    writer reads as ended before the command has opened it). bwrap's own messages go to `stderr`, a
    file, read back with `errors()`."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="hybrid-agent-command-")
        self.path = os.path.join(self._dir, "output")
        os.mkfifo(self.path, 0o600)
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._writer: int | None = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        self.reader = os.fdopen(fd, "rb")
        self.stderr = os.open(os.path.join(self._dir, "bwrap-errors"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)

    def command_exited(self) -> None:
        """bwrap is gone: from now on the output ends when the command's last writer closes it."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def errors(self) -> bytes:
        return os.pread(self.stderr, 65536, 0)

    def close(self, *, reader_done: bool) -> None:
        """Free everything; the read end only when nothing is blocked reading it (see command.py)."""
        self.command_exited()
        os.close(self.stderr)
        if reader_done:
            self.reader.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _git_dir(ws: str) -> str | None:
    """The folder of the workspace's own repository whose hooks and config git uses, when it lies
    inside the workspace: `.git` itself, or for a `.git` file (a linked worktree, a submodule) the
    folder it names, or that folder's common folder (where a linked worktree's hooks and config are)."""
    dot_git = os.path.join(ws, ".git")
    if os.path.isdir(dot_git) and not os.path.islink(dot_git):
        found = os.path.realpath(dot_git)
    elif os.path.isfile(dot_git):
        try:
            with open(dot_git, encoding="utf-8", errors="replace") as f:
                first = f.read(4096).strip()
        except OSError:
            return None
        if not first.startswith("gitdir:"):
            return None
        found = os.path.realpath(os.path.join(ws, first.removeprefix("gitdir:").strip()))
        try:
            with open(os.path.join(found, "commondir"), encoding="utf-8", errors="replace") as f:
                found = os.path.realpath(os.path.join(found, f.read(4096).strip()))
        except OSError:
            pass
    else:
        return None
    return found if os.path.isdir(found) and _inside(found, ws) else None


def _inside(path: str, ws: str) -> bool:
    return path == ws or path.startswith(ws.rstrip("/") + "/")


def _between(ws: str, path: str) -> list[str]:
    """The folders strictly between `ws` and `path` (inside it)."""
    out, parent = [], os.path.dirname(path)
    while parent != ws and _inside(parent, ws):
        out.append(parent)
        parent = os.path.dirname(parent)
    return out


_HOOKS_PATH = re.compile(r"^\s*hookspath\s*=\s*(.*?)\s*$", re.IGNORECASE)


def _hooks_path(config: str, ws: str) -> str | None:
    """`core.hooksPath` of a repository's config file, resolved (relative: to the workspace, where git
    runs hooks from), or None. A plain reading of the `[core]` section, enough for the usual
    `hooksPath = .githooks`; includes and quoting tricks are not followed."""
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    section, found = "", None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped[1:].split("]")[0].strip().lower()
        elif section == "core" and (m := _HOOKS_PATH.match(stripped)):
            found = m.group(1).strip('"')
    if not found:
        return None
    return os.path.realpath(os.path.join(ws, os.path.expanduser(found)))


def git_protected(ws: str) -> list[str]:
    """The paths inside the workspace `ws` that a confined command may not change because git runs
    what they say outside the sandbox: each repository folder's `hooks` and `config`, and the
    `core.hooksPath` folder when it is inside the workspace. Missing ones are made (empty), so there
    is something to mount read-only over them."""
    git_dir = _git_dir(ws)
    if git_dir is None:
        return []
    out: list[str] = []
    for repo in [git_dir, *_submodule_dirs(git_dir)]:
        config = os.path.join(repo, "config")
        folders = [os.path.join(repo, "hooks")]
        if (hooks_path := _hooks_path(config, ws)) is not None and _inside(hooks_path, ws):
            folders.append(hooks_path)
        for path in (config, *folders):
            try:
                if not os.path.lexists(path):
                    if path == config:
                        with open(config, "x"):
                            pass
                    else:
                        os.makedirs(path)
            except OSError:
                continue  # (a read-only workspace: the command cannot make it either)
            real = os.path.realpath(path)
            if _inside(real, ws) and real != ws and os.path.exists(real) and real not in out:
                out.append(real)
    return out


_MAX_SUBMODULES = 256


def _submodule_dirs(git_dir: str) -> list[str]:
    """The repository folders of submodules under `git_dir/modules` (git runs their hooks and reads
    their config when it works in a submodule: `git submodule update`, `git status`)."""
    out: list[str] = []
    for root, dirs, files in os.walk(os.path.join(git_dir, "modules")):
        if "HEAD" in files and "config" in files:
            out.append(root)
            dirs[:] = [d for d in dirs if d == "modules"]  # nested submodules only, not objects/
        if len(out) >= _MAX_SUBMODULES:
            break
    return out


def sandboxed_argv(
    argv: list[str],
    policy: SandboxPolicy,
    workspace: str | os.PathLike[str],
    env: dict[str, str],
    output: str | None = None,
) -> list[str]:
    """`argv` as run under `policy`: unchanged when the mode is `off`, else wrapped in bwrap. `env` is
    the command's environment (HOME and XDG_RUNTIME_DIR are hidden); `output`, an `OutputChannel`'s
    path, receives the command's stdout and stderr. Raises SandboxUnavailable."""
    if not policy.confined:
        return list(argv)
    bwrap = find_bwrap(policy)
    if bwrap is None:
        raise SandboxUnavailable(sandbox_problem(policy) or BWRAP_MISSING)
    ws = os.path.realpath(os.fspath(workspace))
    # Order matters: later mounts go on top of earlier ones (the workspace may live in /tmp or $HOME).
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for hidden in {_real_dir(env.get("HOME")), _real_dir(env.get("XDG_RUNTIME_DIR"))} - {None}:
        args += ["--tmpfs", str(hidden)]
    for sock in _sockets(SERVICE_SOCKETS):
        args += ["--ro-bind", "/dev/null", sock]
    for src, dst in _bind_pairs(policy.allow_read):
        args += ["--ro-bind", src, dst]
    args += ["--bind" if policy.mode == "workspace-write" else "--ro-bind", ws, ws]
    for name in _READ_ONLY_IN_WORKSPACE:
        inner = Path(ws, name)
        if inner.is_dir() and not inner.is_symlink():
            args += ["--ro-bind", str(inner), str(inner)]
    if policy.mode == "workspace-write":
        protected = git_protected(ws)
        # Each folder between the workspace and a protected path is bound onto itself first: a mount
        # point cannot be renamed or removed, so `mv .git old && mkdir -p .git/hooks` fails too.
        pinned = sorted({a for p in protected for a in _between(ws, p)}, key=lambda a: a.count("/"))
        for folder in pinned:
            args += ["--bind", folder, folder]
        for path in protected:
            args += ["--ro-bind", path, path]
    if output is not None:
        args += ["--bind", output, _OUTPUT_INSIDE]
        argv = ["/bin/sh", "-c", f'exec "$@" > {_OUTPUT_INSIDE} 2>&1', "sh", *argv]
    if not policy.network:
        args.append("--unshare-net")
    # A pid namespace of its own: with the host's, /proc/<pid>/root of any process of the user leads
    # back to the whole unconfined filesystem. No --die-with-parent: a daemon the command starts
    # lives on, as it does without a sandbox (a timeout still stops the whole process group).
    args += ["--unshare-pid", "--unshare-ipc", "--chdir", ws, "--"]
    return args + list(argv)
