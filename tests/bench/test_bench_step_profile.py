"""bench/gpu_step_profile.py's smoke mode (a toy OLMo Hybrid shape on the CPU, the profiler with CPU
activities): every row count gets its step time and its profile, the per-step op count grows with
nothing but the rows' own work, the file holds the run, and bad flags get a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture
def bench(bench_script: Any) -> Any:
    return bench_script("gpu_step_profile")


def test_smoke_run(bench, tmp_path: Path) -> None:
    out = tmp_path / "sp.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["--tiny", "--rows", "1,3", "--steps", "2", "--profile-steps", "2", "--context", "12"]
        res = bench.main([*argv, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert torch.is_grad_enabled()
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for r in (1, 3):
        step, prof = res[f"step_{r}"], res[f"profile_{r}"]
        assert step["rows"] == r and step["step_ms"] > 0 and step["steps"] == 2
        assert step["tok_s"] == pytest.approx(r * 1e3 / step["step_ms"])
        assert prof["kernels_per_step"] > 0 and prof["kernel_ms_per_step"] > 0
        assert prof["top"] and sum(k["ms"] for k in prof["top"]) <= prof["kernel_ms_per_step"] + 1e-9
    assert res["step_1"]["vs_1_row"] == 1.0
    assert res["step_3"]["vs_1_row"] == pytest.approx(res["step_3"]["step_ms"] / res["step_1"]["step_ms"])


@pytest.mark.parametrize("argv", [["--rows", "a,b"], ["--rows", "0"], ["--steps", "0"]])
def test_bad_flags(bench, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", *argv, "--out", "/dev/null"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
