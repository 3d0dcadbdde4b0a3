"""The pure parts: slash-command parsing and completion, the diff renderer, the clipboard fallback,
the session row adapter and relative times."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hybrid_agent.memory.records import SessionInfo
from hybrid_agent.tui.clipboard import copy_to_system_clipboard
from hybrid_agent.tui.screens.approval import describe_source
from hybrid_agent.tui.screens.sessions import relative_time, session_row
from hybrid_agent.tui.slash import (
    SLASH_COMMANDS,
    ParsedCommand,
    SlashCommandError,
    complete,
    is_slash_command,
    parse,
)
from hybrid_agent.tui.widgets.diff_view import render_diff
from hybrid_agent.tui.widgets.status_bar import StatusInfo, format_status


def test_parse_and_reject_slash_commands() -> None:
    assert parse("/rewind 3 files") == ParsedCommand("rewind", ("3", "files"))
    assert parse("  /fork  ") == ParsedCommand("fork", ())
    assert parse("/memory reload") == ParsedCommand("memory", ("reload",))
    assert parse("/status") == ParsedCommand("status", ())
    for bad, says in [("/nope", "unknown command /nope"), ("/rewind", "usage: /rewind N"),
                      ("/fork x", "N is a turn number"),
                      ("/memory now", r"usage: /memory \[reload\]")]:  # fmt: skip
        with pytest.raises(SlashCommandError, match=says):
            parse(bad)
    assert (
        is_slash_command("/help") and not is_slash_command("/etc/hosts is odd") and not is_slash_command("hi")
    )
    # A mistyped command never reaches the model (whatever it reads stays in the session's state):
    # '/word' alone, or a first word close to a command. Paths and other text still go through.
    for typo in ("/bogus", "/hlep", "/rewnd 3", "/frok 2", "  /qiut  "):
        assert is_slash_command(typo), typo
    for message in ("/usr is full", "/etc/hosts", "/tmp/x.py fails", "/2 is a path?", "/ alone", "a /help"):
        assert not is_slash_command(message), message
    with pytest.raises(SlashCommandError, match=r"unknown command /rewnd; did you mean /rewind\?"):
        parse("/rewnd 3")
    with pytest.raises(SlashCommandError, match=r"unknown command /bogus; /help lists them .*word before"):
        parse("/bogus")


def test_completion() -> None:
    assert [c.name for c in complete("/re")] == ["resume", "rewind"]
    assert [c.name for c in complete("/")] == [c.name for c in SLASH_COMMANDS]
    assert complete("/resume x") == [] and complete("hello") == []


def test_diff_lines_are_marked_and_code_highlighted() -> None:
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-def f(): return 1\n+def f(): return 2\n"
    content = render_diff(diff)
    lines = content.split("\n")
    assert [str(line) for line in lines] == diff.rstrip("\n").split("\n")  # the text is the diff, exactly
    added, removed = lines[4], lines[3]
    assert any("$success" in str(s.style) for s in added.spans)
    assert any("$error" in str(s.style) for s in removed.spans)
    # 'def' is highlighted as a Python keyword inside the changed line.
    assert any(str(added)[s.start : s.end] == "def" for s in added.spans)


def test_system_clipboard_uses_the_first_tool_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "clipboard.txt"
    tool = tmp_path / "xclip"  # a stand-in xclip: a real program that stores what it reads
    tool.write_text(f"#!/bin/sh\nexec /bin/cat > {out}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert copy_to_system_clipboard("the answer ✓") == "xclip"
    assert out.read_text() == "the answer ✓"
    monkeypatch.setenv("PATH", os.devnull)
    assert copy_to_system_clipboard("x") is None


def test_session_row_reads_memory_session_info() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    info = SessionInfo(id="s1", title="", workspace="/w", model_fingerprint="f", created_at=now,
                       updated_at=now - timedelta(hours=3), parent_id=None, fork_turn=None,
                       latest_turn=4, n_tokens=12345)  # fmt: skip
    row = session_row(info)
    assert (row.id, row.title, row.turns, row.tokens) == ("s1", "untitled", 4, 12345)
    assert relative_time(row.last_used, now) == "3 h ago"
    assert relative_time(now - timedelta(seconds=5), now) == "just now"
    assert relative_time(None) == "—"


def test_status_line() -> None:
    info = StatusInfo(model="m", device="cuda:0", state_tokens=123456, state_bytes=52_400_000, window=4096,
                      tokens_per_s=87.25)  # fmt: skip
    assert (
        format_status(info)
        == "m │ cuda:0 │ 123,456 tok │ 52.4 MB │ window 4,096\nprefill — │ decode 87.2 tok/s"
    )
    info = info.with_(cache_bytes=1_500_000, cache_limit_bytes=6_000_000, snapshot_bytes=12_300_000,
                      prefill_tokens_per_s=2345.67, session_s=125, git="main *")  # fmt: skip
    assert format_status(info).splitlines() == [
        "m │ cuda:0 │ 123,456 tok │ 52.4 MB │ cache 1.5/6.0 MB, window 4,096",
        "prefill 2,345.7 tok/s │ decode 87.2 tok/s │ time 2m 05s │ disk 12.3 MB │ git main *",
    ]
    full = format_status(info.with_(window=None, cache_limit_bytes=None, git=None)).splitlines()
    assert "cache 1.5 MB, full attention" in full[0] and "git" not in full[1]


def test_tool_sources_in_words() -> None:
    assert describe_source("builtin") == "built-in tool"
    assert describe_source("plugin:acme-tools") == "plugin acme-tools"
    assert describe_source("mcp:github") == "MCP server github"
