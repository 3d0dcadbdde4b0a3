"""`@path` mentions (agent/mentions.py): which words are mentions, what a real workspace attaches,
cuts and refuses, and what the model reads in a turn (the scripted engine logs every prefilled
segment; the turn's record rebuilds the same message on resume)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hybrid_agent.agent.events import MentionNotice
from hybrid_agent.agent.mentions import candidates, expand
from hybrid_agent.agent.records import conversation_of
from hybrid_agent.tools.workspace import Workspace


def test_only_an_at_sign_starting_a_word_outside_code_is_a_mention() -> None:
    text = (
        '@a.txt first; mail bob@example.com, see (@src/x.py) and "@q.md" or @a.txt again.\n'
        "`@inline.py` is code, and so is\n```python\n@decorator.py\ndef f(): ...\n```\n@last"
    )
    assert candidates(text) == ["a.txt", "src/x.py)", "q.md", "last"]
    assert candidates("```\n@never.py (an unclosed fence)") == []
    assert candidates("x@y @ z") == []


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "a.txt").write_text("hello from a\n")
    (root / "src" / "x.py").write_text("print('x')")
    (root / "big.log").write_bytes(("é" * 40 + "\n").encode() * 100)  # 8,100 bytes, 2-byte characters
    (root / "bin.dat").write_bytes(b"\x89PNG\x00\x01")
    (tmp_path / "secret.txt").write_text("outside\n")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    return Workspace(root)


def test_files_are_attached_cut_or_refused_with_a_line_each(ws: Workspace, tmp_path: Path) -> None:
    text = (
        "look at @a.txt, @src/x.py. and @a.txt again, @big.log, @bin.dat, @../secret.txt, "
        f"@{tmp_path / 'secret.txt'}, @link.txt, @src, @property and @nobody"
    )
    found = expand(text, ws, max_bytes=1001)
    got = {a.path: a for a in found.attachments}
    assert list(got) == ["a.txt", "src/x.py", "big.log"]  # once each, in order
    assert got["a.txt"].text == "hello from a\n" and not got["a.txt"].truncated
    assert got["src/x.py"].text == "print('x')"  # the trailing '.' is punctuation, not the name
    big = got["big.log"]
    assert big.truncated and big.size == 8100 and big.text == (("é" * 40 + "\n") * 100)[: len(big.text)]
    assert len(big.text.encode()) == 1000  # cut before the character byte 1001 would split
    notes = {path: message for path, _, message in found.notes}
    assert notes["big.log"] == "@big.log is 8,100 bytes: attached its first 1,001 (mention_max_bytes)"
    assert notes["bin.dat"] == "@bin.dat is not UTF-8 text; not attached"
    for outside in ("../secret.txt", str(tmp_path / "secret.txt"), "link.txt"):
        assert "outside the workspace; not attached" in notes[outside], outside
    assert "not attached" in notes["src"]
    assert not {"property", "nobody"} & set(notes)  # not files: plain text, no note
    context = found.context()
    assert context.startswith("File @a.txt (13 bytes):\n```\nhello from a\n```\n\nFile @src/x.py (10 bytes)")
    assert "File @big.log (8,100 bytes, cut to its first 1,000):" in context
    assert "outside" not in context  # nothing of the file outside was read
    events = found.events()
    assert all(isinstance(e, MentionNotice) for e in events)
    assert [e.message for e in events if e.attached][:2] == [
        "attached @a.txt (13 bytes)",
        "attached @src/x.py (10 bytes)",
    ]


def test_a_file_with_fences_gets_a_longer_fence(ws: Workspace) -> None:
    (ws.root / "doc.md").write_text("text\n```\ncode\n```\n")
    assert expand("@doc.md", ws).context() == "File @doc.md (18 bytes):\n````\ntext\n```\ncode\n```\n````"


def test_the_model_reads_the_file_before_the_message_and_a_resume_rebuilds_it(make_agent, workspace) -> None:
    agent, engine = make_agent(["Seen.<|end|>"])
    events = agent.send_sync("what does @a.txt say? write to me@example.com")
    assert [e.message for e in events if isinstance(e, MentionNotice)] == ["attached @a.txt (13 bytes)"]
    read = engine.prefill_log[-1]
    assert read.index("File @a.txt (13 bytes):\n```\nhello from a\n```") < read.index("what does @a.txt say?")
    [user] = [e for e in agent.store.events(agent.session_id) if e.kind == "user"]
    assert user.content == "what does @a.txt say? write to me@example.com"  # as typed
    assert user.data["mentions"] == [{"path": "a.txt", "size": 13, "truncated": False}]
    [message] = conversation_of(agent.store.events(agent.session_id)).messages[:1]
    assert "hello from a" in message.content and message.content.endswith("write to me@example.com")


def test_mentions_can_be_turned_off(make_agent) -> None:
    agent, engine = make_agent(["Ok.<|end|>"], mention_max_bytes=0)
    events = agent.send_sync("what does @a.txt say?")
    assert not any(isinstance(e, MentionNotice) for e in events)
    assert "hello from a" not in engine.prefill_log[-1]
