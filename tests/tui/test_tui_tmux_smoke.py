"""Smoke test of the real thing: the `hybrid-agent` command opens the TUI in a real terminal (tmux),
a message is typed, and the answer is read off the screen.

The model is a tiny random native model saved with `HybridLM.save_pretrained`; its greedy answer is
gibberish, so the reference is the same model's answer from `hybrid-agent run` (headless, same
prompt, same settings): the screen must show it. Slow (a real model prefill of the system segment
on the CPU), hence `-m slow`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("hybrid-agent"))
SETTINGS = ["--max-new-tokens", "12", "--device", "cpu"]


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait_for(session: str, pattern: str, timeout: float, *, absent: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        if re.search(pattern, screen) and not (absent and re.search(absent, screen)):
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} did not appear within {timeout} s; the screen:\n{_screen(session)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_hybrid_agent_in_tmux_answers_on_screen(tmp_path: Path) -> None:
    import torch
    from hybrid_agent.memory import Store
    from hybrid_agent.model import HybridConfig, HybridLM

    torch.manual_seed(0)
    model_dir = HybridLM(HybridConfig.from_name("tiny")).save_pretrained(tmp_path / "model")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    common = ["--model", str(model_dir), "--workspace", str(workspace), *SETTINGS]

    ref = subprocess.run(
        [CLI, "run", *common, "--db", str(tmp_path / "ref.db"), "--json", "hello"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    answer = json.loads(ref.stdout.splitlines()[-1])["result"]  # --json: the result object last
    # Gibberish may hold Markdown syntax or odd bytes; letters and digits are drawn as they are.
    runs = sorted(re.findall(r"[A-Za-z0-9]{3,}", answer), key=len, reverse=True)
    assert runs, f"the reference answer has nothing legible to look for: {answer!r}"

    session = f"hybrid-agent-smoke-{int(time.time() * 1000)}"
    db = tmp_path / "tui.db"
    command = " ".join([CLI, *common, "--db", str(db)])
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        # Loaded: the loading box is gone and the status bar shows the (empty) state.
        _wait_for(session, r"│\s+0 tok\s+│", timeout=120, absent=r"Loading the model")
        _tmux("send-keys", "-t", session, "hello", "Enter")
        screen = _wait_for(session, r"saved turn 1", timeout=300)
        assert "hello" in screen
        assert runs[0] in screen.replace("\n", "")
        assert re.search(r"ask ⇧⇥\s+model\s+│\s+cpu", screen)  # status: mode, model (its folder), device
        _tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("hybrid-agent did not exit after ctrl+q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    store = Store(f"sqlite:///{db}")
    try:
        (info,) = store.list_sessions()
        assert info.latest_turn == 1 and info.title == "hello"
    finally:
        store.close()
