"""The built-in file tools: reading (ranges, caps, binary, non-UTF-8), writing, editing, searching."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path

import pytest
from hybrid_agent.tools import Limits, ToolRegistry


def test_read_whole_file_and_ranges(registry, sandbox):
    (sandbox.ws / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    res = registry.call("read_file", {"path": "n.txt"})
    assert res.text.splitlines()[0] == "[n.txt: lines 1-10 of 10]"
    assert res.text.splitlines()[1:] == [f"line {i}" for i in range(1, 11)]
    res = registry.call("read_file", {"path": "n.txt", "start_line": 3, "end_line": 5, "line_numbers": True})
    assert res.text.splitlines() == [
        "[n.txt: lines 3-5]",
        "     3\tline 3",
        "     4\tline 4",
        "     5\tline 5",
    ]
    assert res.data["end_line"] == 5
    res = registry.call("read_file", {"path": "n.txt", "start_line": 11})
    assert res.is_error and "only 10 lines" in res.text
    res = registry.call("read_file", {"path": "n.txt", "start_line": 5, "end_line": 2})
    assert res.is_error and "before start_line" in res.text


def test_read_empty_and_missing(registry, sandbox):
    (sandbox.ws / "empty").write_bytes(b"")
    assert registry.call("read_file", {"path": "empty"}).text == "empty is empty"
    res = registry.call("read_file", {"path": "nope.txt"})
    assert res.is_error and "does not exist" in res.text


def test_huge_file_is_streamed_and_capped(sandbox):
    limits = Limits(output_max_chars=10_000, read_max_bytes=1_000_000)
    reg = ToolRegistry(sandbox.ws, load_plugins=False, limits=limits)
    line = "x" * 99 + "\n"
    with open(sandbox.ws / "big.log", "w") as f:
        for _ in range(200_000):  # 20 MB, over read_max_bytes
            f.write(line)
    res = reg.call("read_file", {"path": "big.log"})
    assert not res.is_error and res.data["truncated"]
    assert len(res.text) < 11_000
    assert "continue with start_line=" in res.text
    nxt = res.data["end_line"] + 1
    res2 = reg.call("read_file", {"path": "big.log", "start_line": nxt, "end_line": nxt + 1})
    assert res2.text.splitlines()[1:] == ["x" * 99] * 2
    far = reg.call("read_file", {"path": "big.log", "start_line": 150_000})
    assert far.is_error and "use grep" in far.text


def test_long_single_line_is_cut(registry, sandbox):
    (sandbox.ws / "min.js").write_text("a" * 100_000)
    res = registry.call("read_file", {"path": "min.js"})
    assert "[line cut: 100000 bytes long, its first 4000 characters shown]" in res.text
    assert len(res.text) < 5_000


def test_binary_file_refused_politely(registry, sandbox):
    (sandbox.ws / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 10)
    res = registry.call("read_file", {"path": "img.png"})
    assert res.is_error and "binary file" in res.text and res.data == {"binary": True}
    res = registry.call("edit_file", {"path": "img.png", "old_string": "PNG", "new_string": "GIF"})
    assert res.is_error and "binary" in res.text


def test_non_utf8_text(registry, sandbox):
    raw = "café\n".encode("latin-1") + b"plain\n"
    (sandbox.ws / "latin.txt").write_bytes(raw)
    res = registry.call("read_file", {"path": "latin.txt"})
    assert not res.is_error and res.data["not_utf8"]
    assert "caf\ufffd" in res.text and "plain" in res.text and "not valid UTF-8" in res.text
    before = sandbox.state()
    res = registry.call("edit_file", {"path": "latin.txt", "old_string": "plain", "new_string": "x"})
    assert res.is_error and "not valid UTF-8" in res.text
    assert sandbox.state() == before
    hits = registry.call("grep", {"pattern": "caf"})
    assert hits.data["matches"] == ["latin.txt:1: caf\ufffd"]


def test_write_creates_folders_and_replaces_atomically(registry, sandbox):
    res = registry.call("write_file", {"path": "a/b/c.txt", "content": "one\n"})
    assert not res.is_error and res.text == "created a/b/c.txt (4 bytes)"
    os.chmod(sandbox.ws / "a/b/c.txt", 0o640)
    res = registry.call("write_file", {"path": "a/b/c.txt", "content": "two\n"})
    assert res.text == "overwrote a/b/c.txt (4 bytes)"
    assert (sandbox.ws / "a/b/c.txt").read_text() == "two\n"
    assert (os.stat(sandbox.ws / "a/b/c.txt").st_mode & 0o777) == 0o640  # mode kept
    assert sorted(os.listdir(sandbox.ws / "a/b")) == ["c.txt"]  # no temp files left


def test_write_size_cap(sandbox):
    reg = ToolRegistry(sandbox.ws, load_plugins=False, limits=Limits(write_max_bytes=10))
    before = sandbox.state()
    res = reg.call("write_file", {"path": "x.txt", "content": "x" * 11})
    assert res.is_error and "over the limit" in res.text
    assert sandbox.state() == before


def test_concurrent_writes_never_tear(registry, sandbox):
    """Threads write big distinct payloads to one file; every read sees exactly one whole payload."""
    payloads = [bytes([65 + i]) * 300_000 for i in range(6)]
    seen: list[bytes] = []
    stop = threading.Event()

    def writer(p: bytes) -> None:
        for _ in range(5):
            res = registry.call("write_file", {"path": "shared.txt", "content": p.decode()})
            assert not res.is_error, res.text

    def reader() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append((sandbox.ws / "shared.txt").read_bytes())

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert (sandbox.ws / "shared.txt").read_bytes() in payloads
    assert seen and all(s in payloads for s in seen)
    assert sorted(os.listdir(sandbox.ws)) == [".git", "hello.txt", "shared.txt", "src"]
    # The journal is a consistent chain: each entry's before is the previous entry's after.
    entries = registry.journal.entries()
    assert len(entries) >= 6
    for prev, cur in itertools.pairwise(entries):
        assert cur.before == prev.after


def test_edit_exactly_once(registry, sandbox):
    (sandbox.ws / "f.py").write_text("a = 1\nb = 2\na = 1\n")
    before = sandbox.state()
    res = registry.call("edit_file", {"path": "f.py", "old_string": "a = 1", "new_string": "a = 3"})
    assert res.is_error and "occurs 2 times" in res.text and "lines 1, 3" in res.text
    res = registry.call("edit_file", {"path": "f.py", "old_string": "c = 3", "new_string": "x"})
    assert res.is_error and "not found" in res.text
    res = registry.call("edit_file", {"path": "f.py", "old_string": "b  =   2", "new_string": "x"})
    assert res.is_error and "different whitespace" in res.text
    assert sandbox.state() == before
    res = registry.call(
        "edit_file", {"path": "f.py", "old_string": "b = 2\na = 1", "new_string": "b = 5\na = 1"}
    )
    assert not res.is_error and res.text == "edited f.py at line 2"
    assert (sandbox.ws / "f.py").read_text() == "a = 1\nb = 5\na = 1\n"


def test_edit_overlapping_occurrences_count(registry, sandbox):
    (sandbox.ws / "o.txt").write_text("aaa")
    res = registry.call("edit_file", {"path": "o.txt", "old_string": "aa", "new_string": "b"})
    assert res.is_error and "occurs 2 times" in res.text


def test_preview_shows_unified_diff(registry, sandbox):
    p = registry.preview("edit_file", {"path": "hello.txt", "old_string": "hello", "new_string": "bye"})
    assert p.diff == "--- a/hello.txt\n+++ b/hello.txt\n@@ -1 +1 @@\n-hello\n+bye\n"
    assert p.path == "hello.txt"
    p = registry.preview("write_file", {"path": "new.txt", "content": "x\n"})
    assert p.diff == "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+x\n" and p.summary == "create new.txt"
    p = registry.preview("edit_file", {"path": "hello.txt", "old_string": "zzz", "new_string": "y"})
    assert p.diff is None and "will fail" in p.summary
    p = registry.preview("write_file", {"path": "../x", "content": ""})
    assert "outside the workspace" in p.summary


@pytest.fixture
def project(sandbox) -> Path:
    ws = sandbox.ws
    (ws / ".gitignore").write_text("build/\n*.log\n")
    (ws / "build").mkdir()
    (ws / "build" / "out.py").write_text("TODO build\n")
    (ws / "debug.log").write_text("TODO log\n")
    (ws / "src" / "pkg").mkdir()
    (ws / "src" / "pkg" / "mod.py").write_text("# TODO: fix\nx = 1\n")
    (ws / "src" / "pkg" / ".gitignore").write_text("generated.py\n")
    (ws / "src" / "pkg" / "generated.py").write_text("TODO gen\n")
    (ws / "docs.md").write_text("todo lower\n")
    return ws


def test_list_dir_skips_git_and_ignored(registry, project):
    res = registry.call("list_dir", {})
    assert res.data["entries"] == [
        ".gitignore  (13 bytes)",
        "docs.md  (11 bytes)",
        "hello.txt  (6 bytes)",
        "src/",
    ]
    res = registry.call("list_dir", {"path": "src", "recursive": True})
    assert res.data["entries"] == [
        "main.py  (12 bytes)",
        "pkg/",
        "pkg/.gitignore  (13 bytes)",
        "pkg/mod.py  (18 bytes)",
    ]


def test_glob(registry, project):
    assert registry.call("glob", {"pattern": "*.py"}).data["paths"] == ["src/main.py", "src/pkg/mod.py"]
    assert registry.call("glob", {"pattern": "src/*/*.py"}).data["paths"] == ["src/pkg/mod.py"]
    assert registry.call("glob", {"pattern": "**/m[a-o]*.py"}).data["paths"] == [
        "src/main.py",
        "src/pkg/mod.py",
    ]
    assert registry.call("glob", {"pattern": "*.py", "path": "src/pkg"}).data["paths"] == ["src/pkg/mod.py"]
    assert registry.call("glob", {"pattern": "*.rs"}).text == "no files match '*.rs' in ."


def test_grep(registry, project):
    res = registry.call("grep", {"pattern": "TODO"})
    assert res.data["matches"] == ["src/pkg/mod.py:1: # TODO: fix"]
    res = registry.call("grep", {"pattern": "todo", "ignore_case": True, "glob": "*.md"})
    assert res.data["matches"] == ["docs.md:1: todo lower"]
    res = registry.call("grep", {"pattern": "x = \\d", "path": "src/pkg/mod.py"})
    assert res.data["matches"] == ["src/pkg/mod.py:2: x = 1"]
    res = registry.call("grep", {"pattern": "(unclosed"})
    assert res.is_error and "invalid regular expression" in res.text


def test_grep_caps_results(registry, sandbox):
    (sandbox.ws / "many.txt").write_text("hit\n" * 500)
    res = registry.call("grep", {"pattern": "hit", "max_results": 7})
    assert len(res.data["matches"]) == 7 and res.data["truncated"] and "[cut at 7 matches" in res.text


def test_edit_crlf_file_hint(registry, sandbox):
    (sandbox.ws / "win.txt").write_bytes(b"one\r\ntwo\r\n")
    res = registry.call("edit_file", {"path": "win.txt", "old_string": "one\ntwo", "new_string": "x"})
    assert res.is_error and "Windows line endings, \\r\\n" in res.text
    res = registry.call("edit_file", {"path": "win.txt", "old_string": "one\r\ntwo", "new_string": "1\r\n2"})
    assert not res.is_error and (sandbox.ws / "win.txt").read_bytes() == b"1\r\n2\r\n"


def test_file_too_large_to_journal_is_not_overwritten(sandbox):
    reg = ToolRegistry(sandbox.ws, load_plugins=False, limits=Limits(journal_max_bytes=100))
    (sandbox.ws / "big.txt").write_text("x" * 101)
    before = sandbox.state()
    res = reg.call("write_file", {"path": "big.txt", "content": "small"})
    assert res.is_error and "too large to keep an undo copy of; not changed" in res.text
    assert sandbox.state() == before
