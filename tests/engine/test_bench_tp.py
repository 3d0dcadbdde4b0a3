"""bench/gpu_tp.py: its smoke mode (a toy OLMo Hybrid shape on the CPU, tp=1 and 2 over gloo processes)
writes a row per tp and context, the rank's weights shrinking with tp, and bad flags get a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")


@pytest.fixture
def gpu_tp(bench_script: Any) -> Any:
    return bench_script("gpu_tp")


@pytest.mark.parametrize(
    "argv, message",
    [(["--tp", "0"], "sizes must be 1 or more"), (["--tp", "two"], "give sizes like 1,2,4"),
     (["--steps", "0"], "--steps must be at least 1")],
)  # fmt: skip
def test_bad_flags(gpu_tp, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_tp.main([*argv, "--smoke", "--out", str(tmp_path / "o.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_smoke(gpu_tp, tmp_path: Path) -> None:
    out = tmp_path / "tp.json"
    assert gpu_tp.main(["--smoke", "--tp", "1,2", "--steps", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tp"], r["ctx"]) for r in rows] == [(1, 64), (2, 64)], rows
    assert rows[1]["rank_weights_GB"] < rows[0]["rank_weights_GB"]
    assert all(r["tok_s"] > 0 for r in rows)
