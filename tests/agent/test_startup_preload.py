"""The start of `run`: the model read on a thread while the rest is set up (agent/factory.py
`ModelPreload`) gives the same model as a plain load; a start that fails stops the read; the trace
(agent/startup.py) names each phase in order."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from hybrid_agent.agent.factory import ModelPreload, load_engine
from hybrid_agent.agent.startup import TRACE_ENV, TRACE_PREFIX
from hybrid_agent.model.checkpoints.loader import load_model
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import CheckpointError
from hybrid_agent.model.hybrid import HybridLM

from hybrid_agent.cli import main


def tiny(path: Path, seed: int, layers: int = 2) -> Path:
    torch.manual_seed(seed)
    kinds = ["mamba2", "attention"] * (layers // 2)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=kinds)).save_pretrained(path)
    return path


def preload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hybrid-agent-preload"]


def test_preloaded_engine_equals_a_plain_load(tmp_path: Path) -> None:
    model = tiny(tmp_path / "m", 1)
    reference, _, _ = load_model(model, cache_fingerprint=False)
    preload = ModelPreload(str(model), "cpu")
    engine = load_engine(str(model), device="cpu", preload=preload)
    assert not preload_threads()
    got = engine.model.state_dict()
    want = reference.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    assert engine.model.fingerprint == reference.fingerprint
    # ... and the engine is the one a load without a preload builds.
    plain = load_engine(str(model), device="cpu")
    assert (engine.fingerprint, engine.model_name, engine.device) == (
        plain.fingerprint,
        plain.model_name,
        plain.device,
    )


def test_a_preload_of_another_model_is_discarded(tmp_path: Path) -> None:
    first, second = tiny(tmp_path / "a", 1), tiny(tmp_path / "b", 2)
    preload = ModelPreload(str(first), "cpu")
    engine = load_engine(str(second), device="cpu", preload=preload)
    assert engine.model.fingerprint == load_model(second, cache_fingerprint=False)[0].fingerprint
    assert not preload_threads()
    assert not preload.matches(str(first), "cpu")  # discarded: nothing left to take


def test_a_set_stop_ends_the_load_with_a_clear_error(tmp_path: Path) -> None:
    model = tiny(tmp_path / "m", 1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(CheckpointError, match="cancelled"):
        load_model(model, stop=stop)


def test_a_bad_device_is_one_error_line_from_the_thread(tmp_path: Path) -> None:
    model = tiny(tmp_path / "m", 1)
    preload = ModelPreload(str(model), "no-such-device")
    with pytest.raises(Exception, match="no-such-device"):
        load_engine(str(model), device="no-such-device", preload=preload)
    assert not preload_threads()


def test_a_failed_start_stops_the_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume id that is not there fails after the read started: one error line, no thread left."""
    model = tiny(tmp_path / "m", 1)
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv(TRACE_ENV, "1")
    argv = [
        "run",
        "hi",
        "--model",
        str(model),
        "--db",
        str(tmp_path / "s.db"),
        "--workspace",
        str(tmp_path / "ws"),
    ]
    code = main([*argv, "--resume", "feedfeed"])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith(TRACE_PREFIX)]
    assert code == 1 and len(lines) == 1 and "feedfeed" in lines[0], err
    assert f"{TRACE_PREFIX}preload-start" in err  # the read had started
    assert not preload_threads()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_the_trace_names_the_phases_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, device: str | None
) -> None:
    """With --model and --device both given the read starts before the settings are read (they cannot
    change either); else after."""
    model = tiny(tmp_path / "m", 1)
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv(TRACE_ENV, "1")
    argv = ["run", "hi", "--output-format", "stream-json", "--model", str(model), "--max-new-tokens", "2",
            "--db", str(tmp_path / "s.db"), "--workspace", str(tmp_path / "ws")]  # fmt: skip
    code = main(argv + (["--device", device] if device else []))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["subtype"] == "init"
    marks = [
        line.removeprefix(TRACE_PREFIX).split() for line in err.splitlines() if line.startswith(TRACE_PREFIX)
    ]
    names = [name for name, _ in marks]
    start = ["main", "preload-start", "settings"] if device else ["main", "settings", "preload-start"]
    main_thread = [*start, "imports", "store-open", "model-taken", "engine-ready", "agent-ready"]
    assert [n for n in names if n in main_thread] == main_thread, err
    # The read's own phases come after it started and before the model is taken.
    assert names.index("preload-start") < names.index("device-ready") < names.index("weights-read")
    assert names.index("weights-read") < names.index("model-taken")
    times = [float(t) for name, t in marks if name in main_thread]
    assert times == sorted(times)


def test_no_trace_without_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    model = tiny(tmp_path / "m", 1)
    (tmp_path / "ws").mkdir()
    argv = ["run", "hi", "--model", str(model), "--db", str(tmp_path / "s.db"),
            "--workspace", str(tmp_path / "ws"), "--max-new-tokens", "2"]  # fmt: skip
    assert main(argv) == 0
    assert TRACE_PREFIX not in capsys.readouterr().err
