"""Fixtures for the tool tests: a workspace with a sibling folder outside it, and a byte-exact
fingerprint of both trees so every refused call can be checked to have changed nothing."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hybrid_agent.tools import ToolRegistry


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, mode and content hash (files) or link target (symlinks)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


class Sandbox:
    def __init__(self, tmp_path: Path) -> None:
        self.ws = tmp_path / "ws"
        self.outside = tmp_path / "outside"
        self.ws.mkdir()
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text("top secret\n")
        (self.outside / "dir").mkdir()
        (self.outside / "dir" / "inner.txt").write_text("inner\n")
        (self.ws / "hello.txt").write_text("hello\n")
        (self.ws / "src").mkdir()
        (self.ws / "src" / "main.py").write_text("print('hi')\n")
        (self.ws / ".git").mkdir()
        (self.ws / ".git" / "config").write_text("[core]\n")
        (self.ws / ".git" / "hooks").mkdir()
        self.tmp = tmp_path

    def state(self) -> dict[str, tuple]:
        """Fingerprint of the whole tmp folder: workspace, sibling, everything."""
        return tree_state(self.tmp)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture
def registry(sandbox: Sandbox) -> ToolRegistry:
    return ToolRegistry(sandbox.ws, load_plugins=False)
