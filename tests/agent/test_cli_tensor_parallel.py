"""`hybrid-agent run --tp N` (agent/tp_launch.py): the model split over two processes over gloo gives the
one-process answer, and sessions move between layouts: a --tp 2 session resumed with --tp 1 (and a
--tp 1 session with --tp 2) answers as the uninterrupted one-process session does. Real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main


def _run(tmp: Path, db: str, message: str, *extra: str) -> tuple[str, str]:
    argv = [sys.executable, "-m", "hybrid_agent", "run", message, "--model", str(tmp / "m"), "--db",
            str(tmp / db), "--workspace", str(tmp / "ws"), "--max-new-tokens", "5", *extra]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    *answer, last = done.stdout.splitlines()
    return "\n".join(answer), last.removeprefix("session: ")


@pytest.mark.slow
def test_tp2_run_equals_tp1_and_sessions_move_between_layouts(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    torch.manual_seed(1)
    cfg = HybridConfig(
        vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet"],
        attention={"n_heads": 4, "n_kv_heads": 2}, gated_deltanet={"n_heads": 2, "n_v_heads": 4},
    )  # fmt: skip
    HybridLM(cfg).save_pretrained(tmp_path / "m")
    one, sid1 = _run(tmp_path, "one.db", "hello there")
    two, sid2 = _run(tmp_path, "two.db", "hello there", "--tp", "2")
    assert two == one
    again, _ = _run(tmp_path, "one.db", "and again", "--resume", sid1)  # uninterrupted, tp=1
    assert _run(tmp_path, "two.db", "and again", "--resume", sid2)[0] == again  # saved at 2, read at 1
    assert _run(tmp_path, "one.db", "and again", "--resume", sid1, "--tp", "2")[0] == again  # 1 -> 2


def test_a_model_that_does_not_split_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    """Checked before any rank starts: the heads that do not divide, in one line."""
    attention = {"n_heads": 4, "n_kv_heads": 1}
    HybridLM(
        HybridConfig(vocab_size=267, d_model=32, layer_types=["attention"], attention=attention)
    ).save_pretrained(tmp_path / "m")
    code = main(["run", "hi", "--model", str(tmp_path / "m"), "--db", str(tmp_path / "s.db"), "--tp", "2"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1, err
    assert "attention.n_kv_heads=1 does not split over tp=2" in err


def test_tp_below_one_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "hi", "--tp", "0", "--db", str(tmp_path / "s.db")])
    assert e.value.code == 2
    assert "--tp: 0 is not a whole number from 1 to 64" in capsys.readouterr().err


def test_acp_refuses_tp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["attention"])).save_pretrained(
        tmp_path / "m"
    )
    code = main(["acp", "--model", str(tmp_path / "m"), "--db", str(tmp_path / "s.db"), "--tp", "2"])
    err = capsys.readouterr().err
    assert (
        code != 0 and "acp runs several sessions on one model and has no --tp" in err and err.count("\n") == 1
    )
