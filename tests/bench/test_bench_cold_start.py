"""bench/cold_start.py keeps what it measured: its JSON is rewritten after every start, so a run cut by
a time limit (the device script's SIGTERM) leaves the finished rounds, with each start's row and
phases; a start that hashed the weights (the tree's first, which stores the fingerprint) is marked and
kept out of the medians; `--budget` ends the run by itself before a round that would overrun it.
bench/serve_start.py, built on its helpers, times `serve` from the spawn to /health and a first token."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cold_start.py"


@pytest.fixture
def bench(bench_script: Any) -> Any:
    return bench_script("cold_start")


def _start(r: int, kind: str, first_token: float, hashed: bool = False) -> dict[str, Any]:
    """A start as `timed_run` returns it (milestones, phases, the fingerprint cache's outcome)."""
    return {
        "round": r, "kind": kind, "init_s": first_token - 0.1, "first_token_s": first_token,
        "result_s": first_token + 1.0, "decode_tok_s": 30.0, "agent_tok_s": 31.0, "output_tokens": 31,
        "session_id": f"s{r}", "fingerprint_cache": "stored" if hashed else "hit", "first_start": hashed,
        "phases": {"main": 0.05, "device-ready": 0.5, "weights-read": first_token - 0.5},
    }  # fmt: skip


def test_medians_take_finished_rounds_and_no_start_that_hashed(bench: Any, tmp_path: Path) -> None:
    """Round 1 of tree `b` never ran (the run was cut): round 1 of `a` is listed but not in a median;
    a's round-0 start that hashed the weights is listed and marked, and left out too."""
    a = {"name": "a", "site": None, "help_s": [0.3, 0.4], "first_start": _start(-1, "new", 9.0, True)}
    a["new"] = [_start(0, "new", 8.0, True), _start(1, "new", 2.0)]
    a["resume"] = [_start(0, "resume", 3.0), _start(1, "resume", 2.5)]
    b = {"name": "b", "site": "/x", "help_s": [0.5], "first_start": _start(-1, "new", 7.0, True)}
    b["new"], b["resume"] = [_start(0, "new", 4.0)], [_start(0, "resume", 5.0)]
    out = tmp_path / "cs.json"
    bench.write_json(str(out), bench.report({"rounds": 2}, [a, b], 10**9, complete=False))
    data = json.loads(out.read_text())
    assert (data["complete"], data["rounds_done"], data["rounds"]) == (False, 1, 2)
    ta, tb = data["trees"]["a"], data["trees"]["b"]
    assert ta["new"] == {"n": 0}  # its only finished-round start hashed the weights
    assert (ta["resume"]["n"], ta["resume"]["first_token_s"]) == (1, 3.0)
    assert (tb["new"]["first_token_s"], tb["resume"]["first_token_s"]) == (4.0, 5.0)
    assert tb["new"]["load_gb_s_median"] == round(1.0 / (4.0 - 0.5 - 0.5), 2)
    assert ta["help_s_median"] == 0.3 and tb["help_s_median"] == 0.5
    # Every start is listed, in order, with its phases and whether it hashed the weights.
    assert [(s["round"], s["kind"], s["first_start"]) for s in ta["starts"]] == [
        (0, "new", True), (0, "resume", False), (1, "new", False), (1, "resume", False)
    ]  # fmt: skip
    assert ta["starts"][2]["phases"]["weights-read"] == 1.5
    assert ta["first_start"]["fingerprint_cache"] == "stored"
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, renamed over
    # With both rounds in, the medians take both.
    b["new"].append(_start(1, "new", 6.0))
    b["resume"].append(_start(1, "resume", 7.0))
    b["help_s"].append(0.7)
    done = bench.report({}, [a, b], 0, complete=True)
    assert done["rounds_done"] == 2 and done["trees"]["a"]["new"]["first_token_s"] == 2.0
    assert done["trees"]["b"]["new"]["first_token_s"] == statistics.median([4.0, 6.0])


SERVE_BENCH = BENCH.parent / "serve_start.py"
ACP_BENCH = BENCH.parent / "acp_start.py"


@pytest.mark.parametrize(
    "script, flags, says",
    [(BENCH, ["--rounds", "0"], "--rounds takes a whole number >= 1"),
     (BENCH, ["--budget", "-5"], "--rounds takes a whole number >= 1"),
     (SERVE_BENCH, ["--rounds", "0"], "--rounds takes a whole number >= 1"),
     (ACP_BENCH, ["--think", "-1"], "--think seconds >= 0")],
    ids=["cold-rounds", "cold-budget", "serve-rounds", "acp-think"],
)  # fmt: skip
def test_bad_flags_are_one_usage_line(tmp_path: Path, script: Path, flags: list[str], says: str) -> None:
    bad = subprocess.run(
        [sys.executable, str(script), *flags, "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and says in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.json").exists()


def _bench_process(tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))  # its scratch folder, to see it removed
    (tmp_path / "tmp").mkdir()
    cmd = [sys.executable, str(BENCH), "--shape", "olmo-tiny", "--max-new-tokens", "2", *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a checkpoint and five starts of the CLI: ~20 s on a 2-core machine
def test_a_run_cut_by_sigterm_keeps_its_finished_rounds(tmp_path: Path) -> None:
    out = tmp_path / "cs.json"
    proc = _bench_process(tmp_path, "--rounds", "50", "--out", str(out))
    deadline = time.monotonic() + 240
    while not (out.exists() and json.loads(out.read_text())["rounds_done"] >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # as `timeout` ends the device script's step
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    data = json.loads(out.read_text())
    assert data["complete"] is False and 1 <= data["rounds_done"] < 50
    tree = data["trees"]["this"]
    # The warm-up start hashed the weights and stored the fingerprint; the timed ones read it.
    assert tree["first_start"]["fingerprint_cache"] == "stored" and tree["first_start"]["first_start"]
    timed = [s for s in tree["starts"] if s["round"] < data["rounds_done"]]
    assert timed and all(s["fingerprint_cache"] == "hit" and not s["first_start"] for s in timed)
    assert tree["new"]["n"] == tree["resume"]["n"] == data["rounds_done"]
    listed = [s["first_token_s"] for s in timed if s["kind"] == "new"]
    assert tree["new"]["first_token_s_all"] == listed
    assert tree["new"]["first_token_s"] == pytest.approx(statistics.median(listed), abs=1e-3)
    phases = tree["new"]["phases_median_s"]
    assert next(iter(phases)) == "main" and "model-taken" in phases and "agent-ready" in phases
    assert not list((tmp_path / "tmp").iterdir())  # the scratch folder went, and its runs with it


@pytest.mark.slow  # a checkpoint and two starts of the CLI: ~12 s on a 2-core machine
def test_a_budget_ends_the_run_by_itself_with_a_complete_json(tmp_path: Path) -> None:
    """A budget already spent by the warm-up start: no round begins, the JSON says so, exit 0."""
    out = tmp_path / "cs.json"
    proc = _bench_process(tmp_path, "--rounds", "3", "--budget", "0.5", "--out", str(out))
    stdout, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "round 0: not started, it would end past --budget 0.5 s" in err
    data = json.loads(out.read_text())
    assert json.loads(stdout) == data
    assert (data["complete"], data["rounds_done"]) == (True, 0)
    assert data["trees"]["this"]["new"] == {"n": 0} and data["trees"]["this"]["starts"] == []


@pytest.mark.slow  # a checkpoint and four `serve` processes: ~15 s on a 2-core machine
def test_serve_start_times_health_and_a_first_token(tmp_path: Path) -> None:
    """bench/serve_start.py on a tiny checkpoint: each start answers /health before its first token,
    the trace shows the read started before the server's modules, and the warm-up start hashed."""
    out = tmp_path / "ss.json"
    done = subprocess.run(
        [sys.executable, str(SERVE_BENCH), "--shape", "olmo-tiny", "--rounds", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert (data["complete"], data["rounds_done"]) == (True, 3)
    tree = data["trees"]["this"]
    assert tree["first_start"]["fingerprint_cache"] == "stored"
    assert [s["fingerprint_cache"] for s in tree["starts"]] == ["hit"] * 3
    for s in tree["starts"]:
        assert 0 < s["address_s"] <= s["health_s"] <= s["first_token_s"]
        assert (
            s["phases"]["preload-start"]
            < s["phases"]["imports"]
            < s["phases"]["engine-ready"]
            < s["health_s"]
        )
    serve = tree["serve"]
    assert serve["n"] == 3 and serve["health_s_median"] == statistics.median(serve["health_s_all"])


@pytest.mark.slow  # a checkpoint and three `acp` processes: ~20 s on a 2-core machine
def test_acp_start_times_an_editors_first_token(tmp_path: Path) -> None:
    """bench/acp_start.py on a tiny checkpoint, the session opened 8 s after the spawn (room for a loaded
    2-core machine, where `initialize` alone took 3.3-3.9 s): the read
    started before it and was done by then, so the session's engine did not wait for it."""
    out = tmp_path / "as.json"
    done = subprocess.run(
        [sys.executable, str(ACP_BENCH), "--shape", "olmo-tiny", "--rounds", "2", "--think", "8",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert (data["complete"], data["rounds_done"], data["think_s"]) == (True, 2, 8.0)
    tree = data["trees"]["this"]
    assert tree["first_start"]["fingerprint_cache"] == "stored"
    for s in tree["starts"]:
        assert (
            s["fingerprint_cache"] == "hit"
            and 0 < s["initialize_s"] < 8.0 <= s["session_s"] < s["first_token_s"]
        )
        assert s["phases"]["preload-start"] < s["phases"]["weights-read"] < 8.0 < s["phases"]["model-taken"]
    assert tree["acp"]["n"] == 2
