"""`hybrid-agent sessions check` and `sessions gc`, the session commands on a damaged or read-only
database, and a resume of damaged snapshot rows, through `agent.cli.main(argv)` in this process
(sessions are made with the store directly, except for the resume)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch
from hybrid_agent.agent.cli import main
from hybrid_agent.memory import Store
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_sessions(db: Path, sizes: tuple[int, ...]) -> list[str]:
    ids = []
    with Store(db) as store:
        for i, n in enumerate(sizes):
            sid = store.create_session(f"s{i}", "/w", "fp").id
            for turn in (1, 2):
                store.save_turn(
                    sid, turn, events=[], recurrent={"s": torch.full((n,), 7.0 * i + turn)}, n_tokens=0
                )
            ids.append(sid)
    return ids


def test_sessions_check_reports_damage_with_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    a, b = make_sessions(db, (1000, 1000))
    code, out, _ = call(capsys, "sessions", "check", "--db", str(db))
    assert (
        code == 0 and out.strip() == "checked 2 session(s), 4 turn(s), 4 blob(s) (0.0 MiB): no damage found"
    )
    with sqlite3.connect(db) as conn:  # the silent-older-turn damage: turn 2 renumbered to 0
        conn.execute("UPDATE snapshots SET turn = 0 WHERE session_id = ? AND turn = 2", (a,))
    conn.close()
    code, out, _ = call(capsys, "sessions", "check", "--db", str(db))
    lines = out.splitlines()
    assert code == 1 and lines[-1].endswith("1 problem(s) found")
    assert lines[0].startswith(f"damaged: session {a} turn 0:")
    code, out, _ = call(capsys, "sessions", "check", b[:8], "--db", str(db))  # only b: intact
    assert code == 0 and "checked 1 session(s), 2 turn(s), 2 blob(s)" in out
    code, _, err = call(capsys, "sessions", "show", a, "--db", str(db))  # reading events still works
    assert code == 0, err
    code, _, err = call(capsys, "sessions", "fork", a, "--turn", "1", "--db", str(db))
    assert code == 1 and f"session {a} turn 0" in err and len(err.splitlines()) == 1


def test_sessions_gc_shrinks_the_file_after_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    _, big = make_sessions(db, (1000, 1_500_000))
    size = db.stat().st_size  # the store checkpointed its log into the file when it closed
    assert size > 10_000_000
    code, out, _ = call(capsys, "sessions", "rm", big, "--db", str(db))
    assert code == 0 and "sessions gc" in out
    assert db.stat().st_size >= size  # rm frees pages inside the file only
    code, out, err = call(capsys, "sessions", "gc", "--db", str(db))
    assert code == 0, err
    assert out.startswith("deleted 0 unreferenced blob(s); database ") and "MiB -> " in out
    assert db.stat().st_size < size // 4
    code, out, _ = call(capsys, "sessions", "check", "--db", str(db))
    assert code == 0 and "checked 1 session(s)" in out


def test_damaged_file_lists_but_refuses_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    (sid,) = make_sessions(db, (300_000,))
    raw = bytearray(db.read_bytes())
    at = raw.find(torch.full((64,), 2.0).numpy().tobytes())  # turn 2's state, in an overflow page
    page = at - at % 65536
    raw[page : page + 4] = b"\xff\xff\xff\x7f"  # its next-page pointer: the b-tree no longer adds up
    db.write_bytes(bytes(raw))
    code, out, err = call(capsys, "sessions", "list", "--db", str(db))
    assert code == 0 and sid in out, err
    for argv in (["rm", sid], ["fork", sid, "--turn", "1"], ["gc"]):
        code, out, err = call(capsys, "sessions", *argv, "--db", str(db))
        assert code == 1 and out == ""
        assert len(err.splitlines()) == 1 and "is damaged (SQLite quick_check" in err, err
    code, out, _ = call(capsys, "sessions", "check", "--db", str(db))
    assert code == 1 and "damaged: the database file:" in out
    assert db.read_bytes() == bytes(raw)


def test_read_only_file_lists_and_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "s.db"
    (sid,) = make_sessions(db, (1000,))
    before = db.read_bytes()
    db.chmod(0o444)
    real_access = os.access
    # root may write whatever the mode: make the check see what any other user would
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == db and m & os.W_OK else real_access(p, m)
    )
    code, out, err = call(capsys, "sessions", "list", "--db", str(db))
    assert code == 0 and sid in out, err
    code, out, err = call(capsys, "sessions", "show", sid[:8], "--db", str(db))
    assert code == 0 and f"session {sid}" in out, err
    code, _, err = call(capsys, "sessions", "rm", sid, "--db", str(db))
    assert code == 1 and "is open read-only" in err and len(err.splitlines()) == 1
    assert db.read_bytes() == before


@pytest.mark.slow  # two turns of a tiny model: ~8 s here (the store-level test is in tests/memory)
def test_resume_refuses_a_renumbered_latest_turn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before the digest chain: turn 2 renumbered to 0 made turn 1 the latest, and `--resume` went on
    # from turn 1 without a word.
    torch.manual_seed(1)
    model = tmp_path / "model"
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        model
    )
    (tmp_path / "ws").mkdir()
    db = tmp_path / "s.db"
    common = [
        "--model",
        str(model),
        "--db",
        str(db),
        "--workspace",
        str(tmp_path / "ws"),
        "--max-new-tokens",
        "3",
    ]
    code, out, err = call(capsys, "run", "one", *common)
    assert code == 0, err
    sid = out.splitlines()[-1].removeprefix("session: ")
    assert call(capsys, "run", "two", "--resume", sid, *common)[0] == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE snapshots SET turn = 0 WHERE session_id = ? AND turn = 2", (sid,))
    conn.close()
    code, out, err = call(capsys, "run", "three", "--resume", sid, *common)
    assert code == 1 and "session: " not in out
    assert err.startswith(f"hybrid-agent: error: session {sid} turn 0: ") and len(err.splitlines()) == 1, err


def test_check_prints_damage_with_terminal_controls_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A problem line quotes what the damaged file holds: its control characters must not reach the
    terminal (an ESC sequence could rewrite what the user sees)."""
    from hybrid_agent.memory.maintenance import CheckReport

    db = tmp_path / "s.db"
    make_sessions(db, (1,))
    report = CheckReport(sessions=1, turns=1, blobs=1, bytes=1, problems=["session \x1b[2Jx: bad"])
    monkeypatch.setattr(Store, "check", lambda self, session_id=None: report)
    code, out, _ = call(capsys, "sessions", "check", "--db", str(db))
    assert code == 1
    assert "\x1b" not in out and "session \\x1b[2Jx: bad" in out
