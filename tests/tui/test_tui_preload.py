"""The terminal UI's start reads the weights on a thread from the moment its options are checked
(hybrid_agent/cli.py `run_tui`, agent/factory.py `ModelPreload`), as `run` does: the agent the UI
opens takes that model, bit-equal to a plain load; a UI that exits before taking it leaves no thread."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.cli import parse_args
from hybrid_agent.agent.commands import tui_options
from hybrid_agent.agent.factory import ModelPreload
from hybrid_agent.model.checkpoints.loader import load_model
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.tui.app import HybridAgentApp, factory_of
from tui_testkit import ready

from hybrid_agent.cli import main

pytestmark = pytest.mark.anyio


def tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        path
    )
    return path


def preload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hybrid-agent-preload"]


def ui_args(tmp_path: Path, model: Path) -> list[str]:
    (tmp_path / "ws").mkdir(exist_ok=True)
    return [
        "--model",
        str(model),
        "--device",
        "cpu",
        "--db",
        str(tmp_path / "s.db"),
        "--workspace",
        str(tmp_path / "ws"),
    ]


async def test_the_ui_agent_takes_the_preloaded_model(tmp_path: Path) -> None:
    model = tiny(tmp_path / "m", 1)
    options = tui_options(parse_args(ui_args(tmp_path, model)))
    preload = ModelPreload(options["model"], options["device"], options["seed"])
    app = HybridAgentApp(factory_of(options, preload), cursor_blink=False, system_clipboard=False)
    app.preload = preload
    try:
        async with app.run_test(size=(110, 40)) as pilot:
            await ready(pilot)
            got = app.bridge.agent.engine.model
            assert not preload_threads() and not preload.matches(options["model"], "cpu")  # taken
            want = load_model(model, cache_fingerprint=False)[0]
            assert got.state_dict().keys() == want.state_dict().keys()
            for name, tensor in want.state_dict().items():
                assert torch.equal(got.state_dict()[name], tensor), name
            assert got.fingerprint == want.fingerprint
    finally:
        preload.discard()


def test_run_tui_starts_the_read_and_stops_it_if_the_ui_exits_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI gets the read already started for its model; one that exits without opening the agent
    (quit at the trust question) leaves no thread reading."""
    from hybrid_agent.tui import app as tui_app

    model = tiny(tmp_path / "m", 1)
    handed: list[Any] = []

    def quit_at_once(options: dict[str, Any], *, preload: Any = None, **_: Any) -> int:
        handed.append(preload)
        return 0

    monkeypatch.setattr(tui_app, "run_app", quit_at_once)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(ui_args(tmp_path, model)) == 0
    [preload] = handed
    assert isinstance(preload, ModelPreload) and preload.where == str(model) and preload.device == "cpu"
    assert not preload_threads() and not preload.matches(str(model), "cpu")  # stopped: nothing to take
