"""Exactness end to end, in real processes: a session that is saved, its process gone, and resumed in
a new one produces the same tokens as one that never stopped (small native model, greedy decoding,
the real Store on SQLite).

Each "session A" runs its three turns in one process. The comparison is of the assistant's raw text
(the byte tokenizer maps it 1:1 to the tokens, special tokens included) and, stronger, of the saved
state after turn 3: recurrent tensors and the turn's attention-cache page, bit for bit.

Every process is a new one forked from a helper that imported torch and the agent but never ran
them (tests/agent/drive_session.py --serve): it starts in milliseconds instead of an interpreter's
seconds, and a session's state reaches the next process only through the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.memory import Store
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("drive_session.py")
PROMPTS = ["first question", "second question", "third question"]
TOKENS = "12"  # new tokens per turn: enough to compare, few enough to be quick


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1234)
    cfg = HybridConfig(
        vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet", "attention"]
    )
    path = tmp_path_factory.mktemp("tiny-model")
    HybridLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runner() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Runs drive_session.py's arguments, or the `hybrid-agent` command line (first argument "cli"),
    each in a new process forked from one that imported torch and the agent but never ran them."""
    server = subprocess.Popen(
        [sys.executable, str(DRIVER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        server.stdin.write(json.dumps(argv) + "\n")
        server.stdin.flush()
        lines = []
        while not (line := server.stdout.readline()).startswith("exited") and line:
            lines.append(line)
        assert line, "the helper process died"
        code = os.waitstatus_to_exitcode(int(line.split()[1]))
        return subprocess.CompletedProcess(argv, code, "".join(lines), "(on the test's stderr)")

    yield run
    server.stdin.close()
    server.wait(timeout=30)


def drive(runner: Any, model: Path, db: str, ws: Path, prompts: list[str], **kw: Any) -> list[dict[str, Any]]:
    args = [str(model), db, str(ws), *prompts, "--max-new-tokens", TOKENS]
    for k, v in kw.items():
        if v is not None:
            args += [f"--{k}", str(v)]
    out = runner(*args)
    assert out.returncode == 0, out.stdout
    return [json.loads(line) for line in out.stdout.splitlines()]


def cli(runner: Any, *args: str) -> subprocess.CompletedProcess[str]:
    out = runner("cli", *args)
    assert out.returncode == 0, out.stdout
    return out


def cli_turn(
    runner: Any, model: Path, db: str, ws: Path, session: str, prompt: str, window: int | None
) -> dict[str, Any]:
    opts = ["--window", str(window)] if window else []
    out = cli(runner, "run", prompt, "--json", "--resume", session, "--model", str(model), "--db", db,
              "--workspace", str(ws), "--max-new-tokens", TOKENS, *opts)  # fmt: skip
    end = json.loads(out.stdout.splitlines()[-1])  # --json: Claude Code's stream-json, the result last
    assert end["type"] == "result" and end["saved"]
    return {**end, "completion_tokens": end["usage"]["output_tokens"]}


def assert_same_state(store: Store, a: str, b: str, turn: int) -> None:
    sa, sb = store.load_snapshot(a, turn), store.load_snapshot(b, turn)
    assert sa.n_tokens == sb.n_tokens
    assert sa.recurrent.keys() == sb.recurrent.keys()
    for k in sa.recurrent:
        assert torch.equal(sa.recurrent[k], sb.recurrent[k]), k
    # The page this turn added (the append-only part of the attention cache).
    pa, pb = sa.pages[-1], sb.pages[-1]
    assert pa[:2] == pb[:2]  # (start, end)
    for k in pa[2]:
        assert torch.equal(pa[2][k], pb[2][k]), k


def raw_of(store: Store, session: str, turn: int) -> list[str]:
    return [e.data["raw"] for e in store.events(session) if e.kind == "assistant" and e.turn == turn]


@pytest.mark.parametrize(
    "window", [None, pytest.param(48, marks=pytest.mark.slow)], ids=["full-attention", "window-48"]
)
def test_resume_and_fork_in_new_processes_are_exact(
    tiny_model: Path, tmp_path: Path, window: int | None, runner: Any
) -> None:
    db, ws = f"sqlite:///{tmp_path / 's.db'}", tmp_path
    # Session A: three turns in one process. Session B: two turns, then that process exits.
    straight = drive(runner, tiny_model, db, ws, PROMPTS, window=window)
    a = straight[0]["session_id"]
    b = drive(runner, tiny_model, db, ws, PROMPTS[:2], window=window)[0]["session_id"]
    # A new process resumes B and runs the third turn.
    third = cli_turn(runner, tiny_model, db, ws, b, PROMPTS[2], window)
    # A fork of A at turn 1, replayed turn by turn in new processes.
    fork = cli(runner, "sessions", "fork", a, "--turn", "1", "--db", db).stdout.strip()
    for prompt in PROMPTS[1:]:
        cli_turn(runner, tiny_model, db, ws, fork, prompt, window)

    with Store(db) as store:
        for other in (b, fork):
            for turn in (1, 2, 3):
                assert raw_of(store, other, turn) == raw_of(store, a, turn)
            assert_same_state(store, a, other, 3)
        assert third["completion_tokens"] == straight[2]["completion_tokens"] > 0
        assert third["state_tokens"] == straight[2]["state_tokens"]
        if window is not None:
            # The state holds no more than the sinks and the window of attention cache.
            assert straight[2]["state_tokens"] > 4 * window
            # Constant memory, up to the model's eviction slack (a few tokens past the window).
            sizes = [third["state_bytes"]] + [t["state_bytes"] for t in straight]
            assert max(sizes) <= 1.05 * min(sizes)
            assert third["window"] == window
