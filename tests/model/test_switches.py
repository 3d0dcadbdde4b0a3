"""model/switches.py: one spelling for every HYBRID_AGENT_* on/off switch, a clear error otherwise."""

from __future__ import annotations

import pytest
from hybrid_agent.model.errors import SwitchError
from hybrid_agent.model.switches import env_switch


def test_on_off_and_auto_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "HYBRID_AGENT_TEST_SWITCH"
    monkeypatch.delenv(name, raising=False)
    assert env_switch(name) is None
    spellings = {"1": True, " On ": True, "YES": True, "true": True, "0": False, "off": False, "No": False,
                 "FALSE": False, "": None, "auto": None}  # fmt: skip
    for raw, want in spellings.items():
        monkeypatch.setenv(name, raw)
        assert env_switch(name) is want, raw
        assert env_switch(name, raw) is want, raw  # an explicit value, the environment aside
    monkeypatch.setenv(name, "sometimes")
    with pytest.raises(SwitchError, match=r"HYBRID_AGENT_TEST_SWITCH takes 1, 0 or auto .*'sometimes'"):
        env_switch(name)


def test_a_bad_switch_is_one_line_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a person sees: the CLI's one-line error (agent/commands.py `run_command`) naming the
    variable, not an internal error with a traceback."""
    import argparse

    import torch
    from hybrid_agent.agent.commands import EXIT_ERROR, run_command
    from hybrid_agent.agent.engine import want_decode_engine

    monkeypatch.setenv("HYBRID_AGENT_DECODE_ENGINE", "maybe")
    status = run_command(
        lambda a: int(want_decode_engine(None, torch.device("cpu"))), argparse.Namespace(debug=False)
    )
    assert status == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert (
        err == "hybrid-agent: error: HYBRID_AGENT_DECODE_ENGINE takes 1, 0 or auto (unset: auto); got 'maybe'"
    )
