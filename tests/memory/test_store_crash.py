"""Crash safety: a writer SIGKILLed at random moments never loses or damages a committed snapshot.

After every kill: the SQLite file passes `PRAGMA integrity_check`, the store opens, every turn the
writer reported as committed is there, and the latest snapshot loads and equals what was written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hybrid_agent.memory import Store

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crash_writer", HERE / "crash_writer.py")
assert _spec is not None and _spec.loader is not None
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)


class Zygote:
    def __init__(self, url: str, sid: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), "zygote", url, sid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=HERE.parents[1],
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().strip())

    def next_line(self) -> str:
        return self.lines.get(timeout=60)

    def spawn_and_kill(self, delay: float, after_first_commit: bool) -> list[int]:
        """Start a writer and SIGKILL it `delay` seconds after it started, or after its first commit
        (then the kill lands mid-stream however slow the machine is). The turns it reported committed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"spawn\n")
        self.proc.stdin.flush()
        committed: list[int] = []
        pid = None
        while pid is None:
            line = self.next_line()
            if line.startswith("pid "):
                pid = int(line.split()[1])
            elif line.startswith("committed "):
                committed.append(int(line.split()[1]))
            else:
                raise AssertionError(f"writer said {line!r}")
        while after_first_commit and not committed:
            line = self.next_line()
            if not line.startswith("committed "):
                raise AssertionError(f"writer said {line!r}")
            committed.append(int(line.split()[1]))
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # it may have died on its own: reported below
            os.kill(pid, signal.SIGKILL)
        while True:
            line = self.next_line()
            if line.startswith("committed "):
                committed.append(int(line.split()[1]))
            elif line.startswith("exited "):
                status = int(line.split()[1])
                assert status == signal.SIGKILL, f"the writer ended on its own (wait status {status})"
                return committed
            else:
                raise AssertionError(f"writer said {line!r}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def check_after_crash(path: Path, sid: str, reported: set[int], full: bool) -> int:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with Store(path) as store:
        turns = [t.turn for t in store.turns(sid)]
        latest = turns[-1] if turns else 0
        assert turns == list(range(1, latest + 1))  # no gaps, nothing half-saved
        assert reported <= set(turns), f"committed turns lost: {sorted(reported - set(turns))}"
        if latest:
            snap = store.load_snapshot(sid, window=None if full else 2 * writer.PAGE_TOKENS)
            assert snap.turn == latest and snap.n_tokens == latest * writer.PAGE_TOKENS
            for name, t in writer.expected_recurrent(latest).items():
                assert torch.equal(snap.recurrent[name], t), name
            first_page = 1 if full else max(1, latest - 1)
            assert [p[0] for p in snap.pages] == [
                (t - 1) * writer.PAGE_TOKENS for t in range(first_page, latest + 1)
            ]
            for page in snap.pages:
                want = writer.expected_page(page[0] // writer.PAGE_TOKENS + 1)
                for name, t in want.tensors.items():
                    assert torch.equal(page[2][name], t)
            assert len(store.events(sid)) == 2 * latest
    return latest


def crash_many_times(tmp_path: Path, kills: int, seed: int) -> None:
    path = tmp_path / "sessions.db"
    with Store(path) as store:
        sid = store.create_session("crash", "/w", "fp").id
    rng = random.Random(seed)
    zygote = Zygote(f"sqlite:///{path}", sid)
    reported: set[int] = set()
    try:
        for i in range(kills):
            # Half the kills land while the writer starts (opening, first commit), half while it is
            # streaming commits (mid-transaction, mid-checkpoint): the loop commits back to back.
            mid_stream = i % 2 == 1
            delay = rng.uniform(0.0, 0.15) if mid_stream else rng.uniform(0.0, 0.1)
            committed = zygote.spawn_and_kill(delay, after_first_commit=mid_stream)
            reported.update(committed)
            check_after_crash(path, sid, reported, full=(i % 10 == 9 or i == kills - 1))
    finally:
        zygote.close()
    assert len(reported) >= kills // 2  # every mid-stream writer committed at least once


def test_sigkill_12_times_loses_nothing(tmp_path: Path) -> None:
    """The default run's share of the kill test (under 5 s on 2 cores); -m slow runs 50 and 300."""
    crash_many_times(tmp_path, kills=12, seed=1)


@pytest.mark.slow
def test_sigkill_50_times_loses_nothing(tmp_path: Path) -> None:
    crash_many_times(tmp_path, kills=50, seed=1)


@pytest.mark.slow
def test_sigkill_300_times_loses_nothing(tmp_path: Path) -> None:
    crash_many_times(tmp_path, kills=300, seed=2)
