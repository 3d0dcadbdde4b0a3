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
to rewrite the settings that confine it.

Process groups: `run_command` starts bwrap in a new session (no controlling terminal, which is what
bwrap's `--new-session` guards against: a command cannot push keystrokes into the user's terminal), and
bwrap and the command share that one process group, so a timeout still kills every process of the
command. `--new-session` itself would move the command into a group of its own, out of that reach, so it
is not used. The pid namespace is shared for the same reason (background processes keep the meaning
they have without a sandbox): a sandboxed command can still see and signal the user's other processes.

If bwrap is not installed, confined commands are refused with one line saying so (logged once per
process); mode `off` runs them as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
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


def sandboxed_argv(
    argv: list[str], policy: SandboxPolicy, workspace: str | os.PathLike[str], env: dict[str, str]
) -> list[str]:
    """`argv` as run under `policy`: unchanged when the mode is `off`, else wrapped in bwrap. `env` is
    the command's environment (HOME and XDG_RUNTIME_DIR are hidden). Raises SandboxUnavailable."""
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
    if not policy.network:
        args.append("--unshare-net")
    args += ["--unshare-ipc", "--die-with-parent", "--chdir", ws, "--"]
    return args + list(argv)
