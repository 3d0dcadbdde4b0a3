"""The workflow features on the command line, through `hybrid_agent.cli.main(argv)` in this process
with a tiny real model: sizes in `sessions list`, `-c`, `@file` mentions and AGENTS.md in `run`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "ws").mkdir()
    torch.manual_seed(1)
    model = HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"]))
    model.save_pretrained(tmp_path / "model")
    return {"model": str(tmp_path / "model"), "db": str(tmp_path / "sessions.db"), "ws": str(tmp_path / "ws")}


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def common(env: dict[str, str]) -> list[str]:
    return ["--model", env["model"], "--db", env["db"], "--workspace", env["ws"], "--max-new-tokens", "3"]


def test_run_attaches_mentions_and_sessions_list_shows_snapshot_bytes(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (Path(env["ws"]) / "notes.txt").write_text("remember the milk\n")
    (Path(env["ws"]).parent / "secret.txt").write_text("outside\n")
    code, out, err = call(capsys, "run", "hello, read @notes.txt and @../secret.txt", *common(env))
    assert code == 0, err
    assert err.splitlines()[:2] == [  # (then the progress bar of reading the long first segment)
        "[attached @notes.txt (18 bytes)]",
        "[@../secret.txt is outside the workspace; not attached (tools may only read inside it)]",
    ]
    sid = out.splitlines()[-1].removeprefix("session: ")
    with sqlite3.connect(env["db"]) as db:  # the distinct blobs of this session's snapshots and pages
        (total,) = db.execute(
            "SELECT sum(size) FROM blobs WHERE sha256 IN (SELECT recurrent_blob FROM snapshots "
            "WHERE session_id = ?1 UNION SELECT blob_sha256 FROM state_pages WHERE session_id = ?1)",
            (sid,),
        ).fetchone()
    assert total > 0
    code, out, _ = call(capsys, "sessions", "list", "--json", "--db", env["db"])
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["id"], row["turns"], row["size_bytes"]) == (sid, 1, total)
    code, out, _ = call(capsys, "sessions", "list", "--db", env["db"])
    header, line = out.splitlines()
    assert header.split()[:4] == ["ID", "TURNS", "TOKENS", "SIZE"]
    assert f"{total / (1 << 20):.1f} MiB" in line


def test_c_is_continue_and_resume_takes_an_optional_id() -> None:
    from hybrid_agent.agent.cli import build_parser
    from hybrid_agent.agent.session_ids import PICK_SESSION

    parse = build_parser().parse_args
    assert parse(["run", "x", "-c"]).continue_ and parse(["-c"]).continue_
    assert parse(["--resume"]).resume == PICK_SESSION and parse(["--resume", "ab12"]).resume == "ab12"
    assert parse(["run", "x", "--resume"]).resume == PICK_SESSION
    assert parse([]).resume is None and not parse([]).continue_
    assert "-c, --continue" in build_parser().format_help()
