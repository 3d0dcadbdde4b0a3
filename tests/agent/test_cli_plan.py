"""`hybrid-agent run --permission-mode plan` (agent/plan.py): the plan on stdout, how to carry it out on
stderr, then the same session resumed in another mode; `--permission-mode plan` in the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main


@pytest.fixture
def common(tmp_path: Path) -> list[str]:
    torch.manual_seed(1)
    model = tmp_path / "model"
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        model
    )
    (tmp_path / "ws").mkdir()
    db, ws = str(tmp_path / "sessions.db"), str(tmp_path / "ws")
    return ["--model", str(model), "--db", db, "--workspace", ws, "--max-new-tokens", "5"]


def test_run_in_plan_mode_prints_the_plan_and_how_to_carry_it_out(
    common: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "plan the change", "--permission-mode", "plan", *common]) == 0
    out, err = capsys.readouterr()
    sid = out.splitlines()[-1].removeprefix("session: ")
    assert f"To carry out the plan: hybrid-agent run --resume {sid} --permission-mode ask" in err


def test_plan_is_a_permission_mode_of_the_cli_and_the_settings(
    common: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid_agent.agent.cli import build_parser

    assert "plan" in build_parser().format_help()
    monkeypatch.setenv("HYBRID_AGENT_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.toml").write_text('permission_mode = "plan"\n')
    assert main(["run", "plan", "--json", *common]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answer = "".join(
        b["text"]
        for e in events
        if e["type"] == "assistant"
        for b in e["message"]["content"]
        if b["type"] == "text"
    )
    assert events[-1]["type"] == "result" and events[-1]["saved"] and events[-1]["plan"] == answer
    # Carried out in the same session, in another mode (the flag beats the settings): no plan any more.
    sid = events[-1]["session_id"]
    assert main(["run", "go ahead", "--json", "--resume", sid, "--permission-mode", "auto", *common]) == 0
    end = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert end["session_id"] == sid and end["turn"] == 2 and end["plan"] is None
    with pytest.raises(SystemExit):
        main(["run", "x", "--permission-mode", "planning", *common])
