"""Property test: whatever path string a model makes up from nasty pieces, a tool either refuses it
(a WorkspaceError, an error result) or acts on a file inside the workspace, and nothing outside
ever changes."""

from __future__ import annotations

import os
from pathlib import Path

from hybrid_agent.tools import ToolRegistry, Workspace, WorkspaceError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PIECES = ["..", ".", "src", "hello.txt", "out", "loop", "inlink", "new", "", "x" * 256, "a\x00b", "~", "\\"]


def _build(tmp: Path) -> tuple[Path, Path]:
    ws, outside = tmp / "ws", tmp / "outside"
    (ws / "src").mkdir(parents=True)
    outside.mkdir()
    (outside / "hello.txt").write_text("outside\n")
    (ws / "hello.txt").write_text("inside\n")
    os.symlink(outside, ws / "out")
    os.symlink("loop", ws / "loop")
    os.symlink("src", ws / "inlink")
    return ws, outside


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(PIECES), min_size=1, max_size=8), absolute=st.booleans())
def test_any_path_is_inside_or_refused(tmp_path_factory, parts, absolute):
    ws_dir, outside = _build(tmp_path_factory.mktemp("fuzz"))
    ws = Workspace(ws_dir)
    path = "/".join(parts)
    if absolute:
        path = str(ws_dir) + "/" + path
    try:
        resolved = ws.resolve(path)
    except WorkspaceError:
        resolved = None
    if resolved is not None:
        assert resolved.is_relative_to(ws.root) and not resolved.is_relative_to(outside.resolve())
    reg = ToolRegistry(ws, load_plugins=False)
    read = reg.call("read_file", {"path": path})
    assert "outside" not in read.text.split("\n", 1)[-1] or read.is_error
    reg.call("write_file", {"path": path, "content": "written\n"})
    assert (outside / "hello.txt").read_text() == "outside\n"
    assert sorted(p.name for p in outside.iterdir()) == ["hello.txt"]
