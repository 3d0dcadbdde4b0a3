"""Adversarial paths: every refused call leaves the workspace and everything beside it byte-for-byte
unchanged, and says why it was refused."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from hybrid_agent.tools import ToolRegistry, Workspace, WorkspaceError

WRITE_CALLS = [
    ("write_file", lambda p: {"path": p, "content": "pwned\n"}),
    ("edit_file", lambda p: {"path": p, "old_string": "top secret", "new_string": "pwned"}),
]
READ_CALLS = [
    ("read_file", lambda p: {"path": p}),
    ("list_dir", lambda p: {"path": p}),
    ("grep", lambda p: {"pattern": "secret", "path": p}),
    ("glob", lambda p: {"pattern": "*", "path": p}),
]
ALL_CALLS = WRITE_CALLS + READ_CALLS


def _refused(registry: ToolRegistry, sandbox, name: str, args: dict, *words: str) -> str:
    before = sandbox.state()
    res = registry.call(name, args, approve=True)
    assert res.is_error, f"{name}({args}) was not refused: {res.text}"
    assert "secret" not in res.text.replace("'secret", "").replace("secret.txt", "").replace("'secret'", "")
    for w in words:
        assert w in res.text, (w, res.text)
    assert sandbox.state() == before, f"{name}({args}) changed the file system"
    return res.text


@pytest.mark.parametrize("name,make", ALL_CALLS)
@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.txt",
        "src/../../outside/secret.txt",
        "./../outside/dir",
        "../../../../../../etc/passwd",
    ],
)
def test_traversal_refused(registry, sandbox, name, make, path):
    _refused(registry, sandbox, name, make(path), "outside the workspace")


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_absolute_path_elsewhere_refused(registry, sandbox, name, make):
    _refused(registry, sandbox, name, make(str(sandbox.outside / "secret.txt")), "outside the workspace")


def test_absolute_path_inside_is_fine(registry, sandbox):
    res = registry.call("read_file", {"path": str(sandbox.ws / "hello.txt")})
    assert not res.is_error and "hello" in res.text


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_symlink_to_outside_file_refused(registry, sandbox, name, make):
    os.symlink(sandbox.outside / "secret.txt", sandbox.ws / "link.txt")
    _refused(registry, sandbox, name, make("link.txt"), "outside the workspace")


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_symlink_through_folder_refused(registry, sandbox, name, make):
    # An intermediate folder that is a link out: src/escape -> ../../outside
    os.symlink("../../outside", sandbox.ws / "src" / "escape")
    _refused(registry, sandbox, name, make("src/escape/secret.txt"), "outside the workspace")
    _refused(registry, sandbox, name, make("src/escape/dir/inner.txt"), "outside the workspace")


def test_write_new_file_under_linked_folder_refused(registry, sandbox):
    os.symlink(sandbox.outside, sandbox.ws / "out")
    _refused(
        registry,
        sandbox,
        "write_file",
        {"path": "out/new/deeper.txt", "content": "x"},
        "outside the workspace",
    )


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_symlink_loop_refused(registry, sandbox, name, make):
    os.symlink("b", sandbox.ws / "a")
    os.symlink("a", sandbox.ws / "b")
    text = _refused(registry, sandbox, name, make("a/file.txt"))
    assert "loop" in text


def test_self_loop_refused(registry, sandbox):
    os.symlink("self", sandbox.ws / "self")
    for name, make in ALL_CALLS:
        assert "loop" in _refused(registry, sandbox, name, make("self"))


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_very_long_names_refused(registry, sandbox, name, make):
    _refused(registry, sandbox, name, make("x" * 300), "longer than 255")
    _refused(registry, sandbox, name, make("/".join(["d" * 200] * 30)), "longer than 4096")


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_nul_byte_refused(registry, sandbox, name, make):
    _refused(registry, sandbox, name, make("hello.txt\x00../../outside/secret.txt"), "NUL")


@pytest.mark.parametrize("name,make", [("read_file", READ_CALLS[0][1]), *WRITE_CALLS])
def test_fifo_refused_without_blocking(registry, sandbox, name, make):
    os.mkfifo(sandbox.ws / "pipe")
    # A read of a FIFO with no writer would block forever; the refusal must come at once.
    _refused(registry, sandbox, name, make("pipe"), "FIFO")


@pytest.mark.parametrize("name,make", ALL_CALLS)
def test_device_file_via_symlink_refused(registry, sandbox, name, make):
    os.symlink("/dev/null", sandbox.ws / "null")
    _refused(registry, sandbox, name, make("null"), "outside the workspace")


def test_device_file_inside_workspace_refused(sandbox):
    # A bind mount or a copied /dev could put a device node inside; mknod needs privileges.
    try:
        os.mknod(sandbox.ws / "zero", 0o600 | 0o020000, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("mknod not permitted here")
    reg = ToolRegistry(sandbox.ws, load_plugins=False)
    _refused(reg, sandbox, "read_file", {"path": "zero"}, "device file")
    _refused(reg, sandbox, "write_file", {"path": "zero", "content": "x"}, "device file")


@pytest.mark.parametrize(
    "path",
    [".git/config", ".git/hooks/pre-commit", ".GIT/config", "src/../.git/config", ".hybrid-agent/cfg.toml"],
)
def test_protected_folders_are_read_only(registry, sandbox, path):
    _refused(registry, sandbox, "write_file", {"path": path, "content": "x"}, "may read but not change")


def test_protected_folder_via_symlink_is_read_only(registry, sandbox):
    os.symlink(".git/config", sandbox.ws / "innocent.txt")
    _refused(
        registry, sandbox, "write_file", {"path": "innocent.txt", "content": "x"}, "may read but not change"
    )
    assert "[core]" in registry.call("read_file", {"path": ".git/config"}).text


def test_directory_as_file_refused(registry, sandbox):
    _refused(registry, sandbox, "read_file", {"path": "src"}, "directory")
    _refused(registry, sandbox, "write_file", {"path": "src", "content": "x"}, "directory")
    _refused(registry, sandbox, "write_file", {"path": "hello.txt/child", "content": "x"}, "not a directory")


def test_symlink_inside_workspace_is_followed(registry, sandbox):
    os.symlink("src/main.py", sandbox.ws / "alias.py")
    assert "print" in registry.call("read_file", {"path": "alias.py"}).text
    res = registry.call("write_file", {"path": "alias.py", "content": "x = 1\n"})
    assert not res.is_error and res.data["path"] == "src/main.py"
    assert (sandbox.ws / "src" / "main.py").read_text() == "x = 1\n"
    assert os.path.islink(sandbox.ws / "alias.py")


def test_listing_does_not_follow_links_out(registry, sandbox):
    os.symlink(sandbox.outside, sandbox.ws / "out")
    res = registry.call("list_dir", {"recursive": True})
    assert "out  (link)" in res.text and "secret" not in res.text
    assert "secret" not in registry.call("grep", {"pattern": "top"}).text


def test_workspace_root_must_exist(tmp_path):
    with pytest.raises(WorkspaceError, match="not a directory"):
        Workspace(tmp_path / "missing")


def test_swap_between_check_and_open_cannot_escape(sandbox):
    """A thread keeps swapping `ws/d` between a real folder and a link to the outside folder while
    writes go to `d/f.txt`. Whatever interleaving happens, nothing outside is ever written."""
    ws = Workspace(sandbox.ws)
    real = sandbox.ws / "d"
    parked = sandbox.ws / "d_real"
    real.mkdir()
    outside_before = sandbox.state()
    outside_before = {k: v for k, v in outside_before.items() if k.startswith("outside")}
    stop = threading.Event()

    swaps = 0
    errors: list[BaseException] = []

    def swapper() -> None:
        nonlocal swaps
        try:
            while not stop.is_set():
                os.rename(real, parked)
                # The writer may re-create `d` (write_file makes missing folders) at any moment:
                # clear it away and retry each step.
                while True:
                    try:
                        os.symlink(sandbox.outside, real)
                        break
                    except FileExistsError:
                        shutil.rmtree(real, ignore_errors=True)
                os.unlink(real)
                while True:
                    try:
                        os.rename(parked, real)
                        break
                    except OSError:
                        shutil.rmtree(real, ignore_errors=True)
                swaps += 1
        except BaseException as e:  # surfaced by the assert below, not lost in a thread
            errors.append(e)

    t = threading.Thread(target=swapper)
    t.start()
    ok = refused = 0
    try:
        for i in range(400):
            try:
                ws.write_bytes("d/secret.txt", f"write {i}\n".encode(), journal_max_bytes=1 << 20)
                ok += 1
            except WorkspaceError:
                refused += 1
    finally:
        stop.set()
        t.join()
    assert not errors and swaps > 10 and refused > 0
    after = {k: v for k, v in sandbox.state().items() if k.startswith("outside")}
    assert after == outside_before
    assert ok + refused == 400
    assert (sandbox.outside / "secret.txt").read_text() == "top secret\n"


def test_resolve_is_component_wise_not_prefix(tmp_path):
    """`/x/ws-evil` starts with the string `/x/ws` but is not inside it."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "ws-evil" / "f").write_text("evil")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.resolve(str(tmp_path / "ws-evil" / "f"))
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.resolve("../ws-evil/f")


def test_relative_and_root(sandbox):
    ws = Workspace(sandbox.ws)
    assert ws.relative("") == "."
    assert ws.relative("src/./main.py") == "src/main.py"
    assert ws.resolve(".") == Path(os.path.realpath(sandbox.ws))
