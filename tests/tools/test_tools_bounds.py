"""The built-in tools stay within bounded time and memory whatever the workspace holds: a huge
single-line file, files over grep's old size cap, trees thousands of folders deep, a catastrophic
regular expression. Each result says what it left out and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from hybrid_agent.tools import Limits, ToolRegistry
from hybrid_agent.tools.walk import WALK_MAX_DEPTH

MiB = 1 << 20


def test_read_file_of_one_huge_line_keeps_memory_bounded(registry, sandbox):
    with open(sandbox.ws / "bundle.min.js", "wb") as f:
        chunk = b"a" * MiB
        for _ in range(64):
            f.write(chunk)
        f.write(b"\nsecond line\n")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        res = registry.call("read_file", {"path": "bundle.min.js"})
        grew = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The old reader held the 64 MiB line twice (bytes, then str): about 130 MiB.
    assert grew < 2 * MiB, f"read_file allocated {grew / MiB:.1f} MiB for a 64 MiB line"
    assert not res.is_error, res.text
    lines = res.text.splitlines()
    assert lines[0] == "[bundle.min.js: lines 1-2 of 2]"
    assert lines[1] == "a" * 4000 + f" ... [line cut: {64 * MiB} bytes long, its first 4000 characters shown]"
    assert lines[2] == "second line"


def test_grep_streams_large_files_and_says_what_it_skipped(registry, sandbox):
    ws = sandbox.ws
    with open(ws / "big.log", "w") as f:  # 5 MB: over the 4 MiB that grep used to skip silently
        f.write(("x" * 99 + "\n") * 50_000)
        f.write("the needle is here\n")
    (ws / "min.js").write_text("needle;" + "y" * (2 * MiB) + "\n")  # one line over the line cap
    (ws / "blob.bin").write_bytes(b"needle\x00" * 100)
    os.mkfifo(ws / "pipe")
    res = registry.call("grep", {"pattern": "needle"})
    assert not res.is_error, res.text
    assert res.data["matches"] == ["big.log:50001: the needle is here", "min.js:1: needle;" + "y" * 293]
    assert "[skipped 1 binary file(s): blob.bin]" in res.text
    assert "[skipped 1 symbolic link(s) or special file(s), never followed: pipe]" in res.text
    assert (
        f"1 line(s) longer than {MiB} bytes were searched in their first {MiB} bytes only: min.js:1"
        in res.text
    )
    assert res.data["skipped"]["binary"] == ["blob.bin"] and res.data["skipped"]["long_lines"] == ["min.js:1"]
    # "no matches" says what was not searched, too
    res = registry.call("grep", {"pattern": "absent"})
    assert res.text.startswith("no matches for 'absent'") and "blob.bin" in res.text


def _make_deep_tree(top: Path, depth: int) -> None:
    """top/d/d/.../d (depth folders) with a file at the bottom, made relative to descriptors: the
    full path is longer than most tools accept."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"needle\n")
        os.close(wfd)
    finally:
        os.close(fd)


def _remove_deep_tree(top: Path) -> None:
    """Remove what _make_deep_tree made, one level per step and without recursion (shutil.rmtree
    recurses once per level): lift d/d to the top, remove the emptied d, rename the lifted one."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            try:
                os.rename("d/d", "lifted", src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                break
            os.rmdir("d", dir_fd=fd)
            os.rename("lifted", "d", src_dir_fd=fd, dst_dir_fd=fd)
        os.unlink("d/bottom.txt", dir_fd=fd)
        os.rmdir("d", dir_fd=fd)
    finally:
        os.close(fd)


# Removing a folder costs milliseconds on some file systems (ext4 with `discard`), so the quick test
# stays at a depth that is still well past WALK_MAX_DEPTH; the slow one goes to 2000.
@pytest.mark.parametrize("depth", [3 * WALK_MAX_DEPTH, pytest.param(2000, marks=pytest.mark.slow)])
def test_deep_tree_is_walked_in_bounded_time_and_says_so(registry, sandbox, depth):
    _make_deep_tree(sandbox.ws, depth)
    try:
        _walk_deep_tree(registry)
    finally:
        _remove_deep_tree(sandbox.ws)


def _walk_deep_tree(registry):
    start = time.monotonic()
    results = {
        "grep": registry.call("grep", {"pattern": "needle"}),
        "glob": registry.call("glob", {"pattern": "*.txt"}),
        "list_dir": registry.call("list_dir", {"recursive": True}),
    }
    elapsed = time.monotonic() - start
    note = f"1 folder(s) deeper than {WALK_MAX_DEPTH} levels were not entered: d/d/d/"
    for name, res in results.items():
        assert not res.is_error, (name, res.text)
        assert note in res.text and "start from a deeper path" in res.text, (name, res.text[-400:])
    entries = results["list_dir"].data["entries"]
    assert "d/" * WALK_MAX_DEPTH in entries and len(entries) == 3 + WALK_MAX_DEPTH
    assert results["glob"].data["paths"] == ["hello.txt"]
    assert results["grep"].data["skipped"]["too_deep"] == ["/".join(["d"] * WALK_MAX_DEPTH)]
    assert elapsed < 5, f"three walks of a deep tree took {elapsed:.1f} s"


_CATASTROPHIC = """
import json, sys, time
from hybrid_agent.tools import Limits, ToolRegistry
limits = Limits()
limits.call_seconds = 0.5  # set as an attribute so the script also runs where Limits has no such field
reg = ToolRegistry(sys.argv[1], load_plugins=False, limits=limits)
out = {}
for name, args in [("grep", {"pattern": "(a+)+$"}), ("glob", {"pattern": "*a" * 12 + "*b"})]:
    start = time.monotonic()
    res = reg.call(name, args)
    out[name] = {"s": time.monotonic() - start, "text": res.text, "error": res.is_error, "data": res.data}
print(json.dumps(out))
"""


def test_catastrophic_patterns_end_within_the_budget(sandbox):
    (sandbox.ws / "evil.txt").write_text("a" * 5000 + "b\n")
    (sandbox.ws / ("a" * 200)).write_text("")
    # In a child process: the old engine never returns from such a match and holds the GIL meanwhile,
    # so only a process can be timed out.
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_CATASTROPHIC), str(sandbox.ws)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=sandbox.outside,  # not the repository: its folders are not importable as they stand
        )
    except subprocess.TimeoutExpired:
        pytest.fail("grep/glob with a catastrophic pattern did not return within 30 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    grep = out["grep"]
    assert not grep["error"] and grep["data"]["truncated"] and grep["data"]["matches"] == []
    assert "[stopped early: the 0.5 s time budget of one tool call ran out" in grep["text"], grep["text"]
    glob = out["glob"]
    assert not glob["error"] and glob["data"]["paths"] == []
    # The regex engine measures its timeout in CPU time; a loaded machine stretches the wall clock.
    assert grep["s"] < 5 and glob["s"] < 5, out


def test_every_walking_tool_says_when_the_budget_ran_out(sandbox):
    reg = ToolRegistry(sandbox.ws, load_plugins=False, limits=Limits(call_seconds=0))
    for name, args in [("list_dir", {}), ("glob", {"pattern": "*"}), ("grep", {"pattern": "x"})]:
        res = reg.call(name, args)
        assert not res.is_error and res.data["truncated"], (name, res.text)
        assert "[stopped early: the 0 s time budget of one tool call ran out" in res.text, (name, res.text)
    res = reg.call("read_file", {"path": "hello.txt"})
    assert res.is_error and "stopped before line 1: the 0 s time budget" in res.text


_LINES = [
    "foo",
    "xfoo",
    "foo bar",
    "xy",
    "y",
    "yz",
    "ab",
    "a",
    "b",
    "",
    "  ",
    "FOO",
    "bar foo",
    "a b",
    "zzzy",
]
_PATTERNS = [
    *("^foo", "foo$", r"\bbar\b", "(?<=x)y", "(?<!x)y", "y(?!z)", r"\Ay", r"y\Z", "(?i)FOO", "(?s)a.*b"),
    *(
        "^$",
        r"\s+$",
        "[^a]$",
        r"a\nb",
        "x*",
        "(?m)^b",
        "(?-i)foo",
        "(?s)b(?![^z])",
        r"^\s*$",
        "o{2}",
        "(?r)y",
        "(?V1)[[a-z]--[b]]$",
    ),
]


@pytest.mark.parametrize("read_chunk", [1 << 20, 7, 1])
def test_grep_by_blocks_finds_exactly_the_lines_a_line_by_line_search_finds(sandbox, monkeypatch, read_chunk):
    import regex
    from hybrid_agent.tools.builtins import search

    monkeypatch.setattr(search, "_READ_CHUNK", read_chunk)  # lines split across reads, too
    lines = [_LINES[(i * 7) % len(_LINES)] for i in range(60)]
    (sandbox.ws / "f.txt").write_text("\n".join(lines) + "\n")
    reg = ToolRegistry(sandbox.ws, load_plugins=False)
    for pattern in _PATTERNS:
        res = reg.call("grep", {"pattern": pattern, "path": "f.txt", "max_results": 200})
        expected = [f"f.txt:{n}: {line}" for n, line in enumerate(lines, 1) if regex.search(pattern, line)]
        assert res.data["matches"] == expected, pattern
    # Windows line ends, a last line without newline, lines over the line cap
    (sandbox.ws / "g.txt").write_bytes(b"abcdefgh\r\nab\r\n\r\nxyzabcdefg")
    reg = ToolRegistry(sandbox.ws, load_plugins=False, limits=Limits(grep_max_line_bytes=4))
    res = reg.call("grep", {"pattern": "^(abcd|ab|xyza|)$", "path": "g.txt"})
    assert res.data["matches"] == ["g.txt:1: abcd", "g.txt:2: ab", "g.txt:3: ", "g.txt:4: xyza"]
    assert res.data["skipped"]["long_lines"] == ["g.txt:1", "g.txt:4"]


def test_run_command_says_which_changes_it_cannot_see(sandbox):
    _make_deep_tree(sandbox.ws, WALK_MAX_DEPTH + 1)
    try:
        reg = ToolRegistry(sandbox.ws, load_plugins=False, enable_commands=True)
        res = reg.call("run_command", {"command": "true"})
    finally:
        _remove_deep_tree(sandbox.ws)
    assert not res.is_error, res.text
    assert f"[files deeper than {WALK_MAX_DEPTH} folder levels are not watched" in res.text
