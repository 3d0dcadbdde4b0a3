"""The command line, driven as a user would: every command and error path, in subprocesses.

Independent commands are started together and awaited together: each process spends most of its
time importing torch. Even so, on a shared 2-core machine these take minutes, so the two big ones are
`-m slow`; tests/agent/test_cli_inprocess.py runs the same paths through `main(argv)` by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

ROOT = Path(__file__).resolve().parents[2]


def tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "ws").mkdir()
    return {
        "model": tiny(root / "model", 1),
        "other": tiny(root / "other", 2),
        "db": root / "sessions.db",
        "ws": root / "ws",
        "root": root,
    }


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hybrid_agent", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "XDG_DATA_HOME": str(ROOT / ".no-such-dir-for-tests"),
            "HYBRID_AGENT_DEFAULT_MODEL": str(ROOT / ".no-such-dir-for-tests"),
        },
    )


def finish(*procs: subprocess.Popen[str]) -> list[tuple[int, str, str]]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


def one_line_error(result: tuple[int, str, str], needle: str) -> None:
    code, out, err = result
    assert code == 1, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("hybrid-agent: error: ") and needle in err, err


@pytest.mark.slow
def test_run_then_every_sessions_command(env: dict[str, Path]) -> None:
    m, db, ws = str(env["model"]), str(env["db"]), str(env["ws"])
    common = ["--model", m, "--db", db, "--workspace", ws, "--max-new-tokens", "6"]
    plain = start("run", "hello there", *common)
    as_json = start("--db", db, "run", "second session", "--json", *common, "--window", "32")
    (code, out, err), (jcode, jout, jerr) = finish(plain, as_json)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("session: ")
    sid = lines[-1].removeprefix("session: ")
    assert jcode == 0, jerr
    events = [json.loads(line) for line in jout.splitlines()]
    assert events[-1]["type"] == "result" and events[-1]["window"] == 32 and events[-1]["turn"] == 1
    assert {e["type"] for e in events} <= {"system", "assistant", "result"}
    other = events[-1]["session_id"]

    listed, listed_json, shown, shown_json, exported, forked = finish(
        start("sessions", "list", "--db", db),
        start("sessions", "list", "--json", "--db", db),
        start("sessions", "show", sid[:8], "--db", db),  # a unique prefix is enough
        start("sessions", "show", sid, "--json", "--db", db),
        start("sessions", "export", sid, "--db", db),
        start("sessions", "fork", sid, "--turn", "1", "--db", db),
    )
    assert all(r[0] == 0 for r in (listed, listed_json, shown, shown_json, exported, forked)), [
        r[2] for r in (listed, listed_json, shown, shown_json, exported, forked)
    ]
    fork_id = forked[1].strip()
    assert fork_id not in (sid, other)
    assert sid in listed[1] and other in listed[1] and "hello there" in listed[1]
    rows = [json.loads(line) for line in listed_json[1].splitlines()]
    # The list ran alongside the fork, so it may or may not show the fork already.
    ids = {r["id"] for r in rows}
    assert {sid, other} <= ids <= {sid, other, fork_id} and all(r["turns"] == 1 for r in rows)
    assert "[1] user: hello there" in shown[1] and "[1] assistant: " in shown[1]
    info = json.loads(shown_json[1])
    assert info["id"] == sid and info["turn_list"][0]["turn"] == 1 and info["state_tokens"] > 0
    kinds = [json.loads(line)["kind"] for line in exported[1].splitlines()]
    assert kinds == ["system", "user", "assistant"]

    removed, after = finish(
        start("sessions", "rm", fork_id, "--db", db), start("sessions", "list", "--db", db)
    )
    assert removed[0] == 0 and f"deleted session {fork_id}" in removed[1]
    # `after` ran alongside rm, so it may or may not still show the fork; list again to check.
    ((code, out, _err),) = finish(start("sessions", "list", "--json", "--db", db))
    assert fork_id not in out and sid in out and after[0] == 0


@pytest.mark.slow
def test_error_paths_print_one_line(env: dict[str, Path], tmp_path: Path) -> None:
    m, db, ws = str(env["model"]), str(env["db"]), str(env["ws"])
    not_db = tmp_path / "notes.txt"
    not_db.write_text("this is not a database\n" * 100)
    ((_, out, _),) = finish(
        start("run", "hi", "--model", m, "--db", db, "--workspace", ws, "--max-new-tokens", "2")
    )
    sid = out.splitlines()[-1].removeprefix("session: ")
    results = finish(
        start("run", "hi", "--db", db),  # no --model and no packaged default model
        start("run", "hi", "--model", str(tmp_path / "missing"), "--db", db),
        start("run", "hi", "--model", m, "--db", db, "--resume", "no-such-session"),
        start("run", "hi", "--model", str(env["other"]), "--db", db, "--resume", sid),
        start("sessions", "show", "nope", "--db", db),
        start("sessions", "fork", sid, "--turn", "7", "--db", db),
        start("sessions", "list", "--db", str(not_db)),
        start("run", "hi", "--model", m, "--db", db, "--workspace", str(tmp_path / "no-such-dir")),
    )
    # The UI's own checks need a terminal (without one it exits 2: tests/test_cli_help.py); they are
    # tested in-process in test_cli_inprocess.py::test_errors.
    needles = ["pass --model PATH", "no model at", "no session 'no-such-session'",
               "another model", "no session 'nope'", "turn 7", "", "no-such-dir"]  # fmt: skip
    for result, needle in zip(results, needles, strict=True):
        one_line_error(result, needle)
    # --debug shows the traceback; a usage error is argparse's (exit 2).
    debug, usage = finish(start("--debug", "sessions", "show", "nope", "--db", db), start("run"))
    assert debug[0] != 0 and "Traceback" in debug[2]
    assert usage[0] == 2 and "usage:" in usage[2]


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path: Path) -> None:
    # `hybrid-agent sessions | head -1`: the reader is gone before anything is written (closed here
    # before the child has even imported), so its first write fails. No error line, no traceback,
    # no "Exception ignored" at exit; status 141 as a shell reports for SIGPIPE.
    proc = start("sessions", "--db", str(tmp_path / "sessions.db"))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert err == ""


def test_invalid_utf8_on_stdin_is_one_line_with_its_offset(env: dict[str, Path], tmp_path: Path) -> None:
    # `hybrid-agent run -` with a Latin-1 file piped in: refused before the model loads, no session.
    db = tmp_path / "sessions.db"
    out = subprocess.run(
        [sys.executable, "-m", "hybrid_agent", "run", "-", "--db", str(db), "--workspace", str(tmp_path),
         "--model", str(env["model"]), "--max-new-tokens", "2"],
        cwd=ROOT, input="naïve\n".encode("latin-1"), capture_output=True, timeout=300,
    )  # fmt: skip
    result = (out.returncode, out.stdout.decode(), out.stderr.decode())
    one_line_error(result, "stdin is not UTF-8 text: byte 0xef at offset 2")
    assert not db.exists()


def test_help_lists_the_commands() -> None:
    (code, out, _), (scode, sout, _) = finish(start("--help"), start("sessions", "--help"))
    assert code == 0 and "run" in out and "sessions" in out and "--window" in out and "--model" in out
    assert scode == 0 and all(a in sout for a in ("list", "show", "fork", "rm", "export"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / "model" / "default" / "config.json").is_file(),
    reason="no packaged default model in this checkout",
)
def test_run_with_the_packaged_default_model(tmp_path: Path) -> None:
    env = {**os.environ, "HYBRID_AGENT_DEFAULT_MODEL": ""}
    out = subprocess.run(
        [sys.executable, "-m", "hybrid_agent", "run", "hello", "--db", str(tmp_path / "s.db"),
         "--workspace", str(tmp_path), "--max-new-tokens", "8", "--json"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["type"] == "result"
