"""The start of `run`: the model read on a thread while the rest is set up (agent/factory.py
`ModelPreload`) gives the same model as a plain load; a start that fails stops the read; the trace
(agent/startup.py) names each phase in order."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from hybrid_agent.agent.factory import ModelPreload, load_engine, preloading
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


def test_preloading_starts_the_read_when_the_model_is_known_and_stops_it_on_a_failure(tmp_path: Path) -> None:
    """The one start-up sequence of run, the UI, serve and acp (`preloading`)."""
    model = tiny(tmp_path / "m", 1)
    started: list[ModelPreload] = []

    def start() -> ModelPreload:
        started.append(ModelPreload(str(model), "cpu"))
        return started[-1]

    seen: list[int] = []  # how many reads had started when the settings were read
    with preloading(start, settle=lambda: seen.append(len(started)), known=False) as preload:
        assert seen == [0] and started == [preload]  # started once the settings were read
    assert preload is not None and preload.matches(str(model), "cpu")  # after the block: the caller's
    engine = load_engine(str(model), device="cpu", preload=preload)
    assert engine.model.fingerprint == load_model(model, cache_fingerprint=False)[0].fingerprint
    with preloading(start, settle=lambda: seen.append(len(started)), known=True) as preload:
        assert seen == [0, 2]  # both known: started before the settings were read
    assert preload is not None
    preload.discard()

    def bad_settings() -> None:
        raise ValueError("bad setting")

    for known in (True, False):  # the settings fail, after the read started or before: no read left
        with (
            pytest.raises(ValueError, match="bad setting"),
            preloading(start, settle=bad_settings, known=known),
        ):
            pass
        assert not preload_threads() and not started[-1].matches(str(model), "cpu")  # discarded
    assert len(started) == 3  # the read had started only where the model was known
    with pytest.raises(OSError, match="port"), preloading(start) as preload:  # the block fails
        raise OSError("port in use")
    assert not preload_threads() and preload is not None and not preload.matches(str(model), "cpu")
    with preloading(lambda: None, settle=lambda: None) as none:  # no read (--tp, a test's engines)
        assert none is None
    with preloading(start, to_the_end=True) as preload:  # the block is its whole use
        assert preload is not None and preload.matches(str(model), "cpu")
    assert not preload_threads() and not preload.matches(str(model), "cpu")


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


# ---- serve and acp start the read the same way ----------------------------------------------------
def _same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    assert model.fingerprint == reference.fingerprint


def _trace(err: str) -> list[str]:
    return [
        line.removeprefix(TRACE_PREFIX).split()[0]
        for line in err.splitlines()
        if line.startswith(TRACE_PREFIX)
    ]


def test_serve_takes_the_preloaded_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read starts before the server's modules, port and database, and the engine is the model a
    plain load gives, bit for bit."""
    from hybrid_agent.agent.cli import parse_args
    from hybrid_agent.agent.serve_command import open_server

    model = tiny(tmp_path / "m", 1)
    monkeypatch.setenv(TRACE_ENV, "1")
    args = parse_args(
        ["serve", "--model", str(model), "--device", "cpu", "--port", "0", "--db", str(tmp_path / "s.db")]
    )
    sock, engine, store, _ = open_server(args)
    try:
        assert not preload_threads()
        _same_weights(engine.model, load_model(model, cache_fingerprint=False)[0])
        assert engine.model_name == "m" and sock.getsockname()[1] > 0
    finally:
        sock.close()
        store.close()
    names = _trace(capsys.readouterr().err)
    main_thread = ["preload-start", "imports", "store-open", "model-taken", "engine-ready"]
    assert [n for n in names if n in main_thread] == main_thread
    assert names.index("preload-start") < names.index("weights-read") < names.index("model-taken")


def test_a_serve_that_fails_to_start_stops_the_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from hybrid_agent.agent.cli import main as agent_main

    model = tiny(tmp_path / "m", 1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = agent_main(
            ["serve", "--model", str(model), "--port", str(port), "--db", str(tmp_path / "s.db")]
        )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert not preload_threads()
    # A device this machine lacks: the read's own error, in one line, once the engine is built.
    code = agent_main(
        ["serve", "--model", str(model), "--device", "tpu9", "--port", "0", "--db", str(tmp_path / "s.db")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--device tpu9" in err, err
    assert not preload_threads()


def _acp_args(tmp_path: Path, *extra: str) -> object:
    from hybrid_agent.agent.cli import parse_args

    (tmp_path / "ws").mkdir(exist_ok=True)
    return parse_args(["acp", "--db", str(tmp_path / "s.db"), "--workspace", str(tmp_path / "ws"), *extra])


def test_acp_sessions_take_the_preloaded_model(tmp_path: Path) -> None:
    """The read starts with the server; the first session's engine takes that model, bit-equal to a
    plain load, and the next session shares its weights."""
    from hybrid_agent.agent.acp_commands import CliOpener

    model = tiny(tmp_path / "m", 1)
    opener = CliOpener(_acp_args(tmp_path, "--model", str(model), "--device", "cpu"))
    try:
        assert opener._preload is not None  # started with the server, before any session
        first = opener.open(tmp_path / "ws", None, {}, None, None)
        assert opener._preload is None and not preload_threads()
        _same_weights(first.engine.model, load_model(model, cache_fingerprint=False)[0])
        second = opener.open(tmp_path / "ws", None, {}, None, None)
        assert second.engine.model is first.engine.model
        first.close()
        second.close()
    finally:
        opener.close()


def test_acp_stops_the_read_when_no_session_takes_it_or_the_start_fails(tmp_path: Path) -> None:
    from hybrid_agent.agent.acp_commands import CliOpener
    from hybrid_agent.agent.errors import AgentError

    model = tiny(tmp_path / "m", 1)
    opener = CliOpener(_acp_args(tmp_path, "--model", str(model)))
    opener.close()  # the editor left before its first session
    assert not preload_threads() and opener._preload is None
    with pytest.raises(AgentError, match="--device tpu9"):
        CliOpener(_acp_args(tmp_path, "--model", str(model), "--device", "tpu9"))
    assert not preload_threads()
    with pytest.raises(AgentError, match="no --tp"):
        CliOpener(_acp_args(tmp_path, "--model", str(model), "--tp", "2"))
    assert not preload_threads()
    # With --model and --device the read starts before the settings are read; settings that fail stop it.
    (tmp_path / "ws" / ".hybrid-agent").mkdir()
    (tmp_path / "ws" / ".hybrid-agent" / "settings.toml").write_text("bogus = 1\n")
    with pytest.raises(Exception, match="unknown key"):
        CliOpener(_acp_args(tmp_path, "--model", str(model), "--device", "cpu"))
    assert not preload_threads()


@pytest.mark.slow  # a new interpreter imports torch and the server: 3 to 10 s on a 2-core machine
def test_the_serve_process_answers_as_a_plain_load_does(tmp_path: Path) -> None:
    """`hybrid-agent serve` as a process, its read traced: the greedy answer equals the one of a server
    over a plain load of the same model, and the states it saved carry the model's fingerprint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import openai
    from hybrid_agent.memory import Store
    from hybrid_agent.memory.prefixes import PrefixIndex

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_testkit import serving

    model = tiny(tmp_path / "m", 1)
    db, log = tmp_path / "s.db", tmp_path / "serve.log"
    env = dict(os.environ, **{TRACE_ENV: "1"}, HYBRID_AGENT_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "hybrid_agent", "serve", "--model", str(model), "--device", "cpu",
           "--port", "0", "--db", str(db), "--max-new-tokens", "8"]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 120
        while "serving" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = log.read_text().split("serving m on ", 1)[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=60)
        ask = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        got = client.chat.completions.create(**ask)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    plain = load_engine(str(model), device="cpu")
    with serving(plain, None) as reference:
        want = reference.client.chat.completions.create(**ask)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage.completion_tokens == want.usage.completion_tokens > 0
    text = log.read_text()
    assert "Traceback" not in text
    names = _trace(text)
    assert names[:2] == ["main", "preload-start"], names  # the read is the first thing serve does
    assert names.index("weights-read") < names.index("model-taken") < names.index("engine-ready")
    with Store(str(db)) as store:
        sessions = store.list_sessions() + store.list_sessions(hidden=True)
        assert PrefixIndex(store).count() >= 1 and {s.model_fingerprint for s in sessions} == {
            plain.fingerprint
        }
    # ... whose weights' part the process hashed from what it read (its cache folder was empty).
    assert plain.fingerprint.startswith(load_model(model, cache_fingerprint=False)[0].fingerprint + ":")


@pytest.mark.slow  # a new interpreter imports torch and the agent: 3 to 10 s on a 2-core machine
def test_the_acp_process_reads_the_weights_before_the_first_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hybrid-agent acp` over stdio, its read traced: the read started before the editor asked for a
    session, and that session's engine took it."""
    import asyncio
    import sys
    import time

    from acp import text_block

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from acp_client import Recorder, connect

    model = tiny(tmp_path / "m", 1)
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv(TRACE_ENV, "1")
    client, log = Recorder(), tmp_path / "stderr.log"
    asked: list[float] = []

    async def go() -> object:
        argv = ["-m", "hybrid_agent", "acp", "--model", str(model), "--device", "cpu",
                "--db", str(tmp_path / "s.db"), "--max-new-tokens", "4"]  # fmt: skip
        async with connect(client, *argv, cwd=tmp_path / "ws", log=log) as (conn, _):
            asked.append(time.time())
            sid = (await conn.new_session(cwd=str(tmp_path / "ws"), mcp_servers=[])).session_id
            return await conn.prompt(session_id=sid, prompt=[text_block("hello")])

    answer = asyncio.run(asyncio.wait_for(go(), 120))
    assert answer.stop_reason in ("end_turn", "max_tokens")
    marks = {
        line.removeprefix(TRACE_PREFIX).split()[0]: float(line.split()[-1])
        for line in log.read_text().splitlines()
        if line.startswith(TRACE_PREFIX)
    }
    assert marks["preload-start"] < asked[0] < marks["model-taken"]
    assert marks["preload-start"] < marks["weights-read"] <= marks["model-taken"]
    assert "Traceback" not in log.read_text()
