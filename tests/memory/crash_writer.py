"""Helper process of the crash and concurrency tests (not a test module itself).

    python crash_writer.py zygote URL SESSION_ID
        Reads commands from stdin. "spawn": fork a writer that saves turns in an endless loop (it
        continues after the session's latest turn) until it is killed; reply "pid N", then "exited S"
        once it died. Forking from this process, which imported torch and the store but never ran a
        tensor op, makes a fresh writer cost milliseconds instead of a new interpreter's second.
    python crash_writer.py write URL SESSION_ID N_TURNS
        Save N_TURNS turns and exit. SESSION_ID "new": create a session first, print "session ID".
        Then print "ready", wait for a line on stdin, print "started CLOCK" and save.

Every writer prints "committed T CLOCK" on stdout right after `save_turn` for turn T returned (CLOCK:
time.monotonic(), system-wide on Linux): the test knows which turns were promised durable before it
killed the writer, and when.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from hybrid_agent.memory import Event, Store
from hybrid_agent.model import Page

PAGE_TOKENS = 16


def expected_recurrent(turn: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(turn)
    return {
        "layers.0.ssm": torch.randn(4, 16, 64, generator=g),  # 64 KiB fp32
        "layers.0.conv": torch.randn(64, 3, generator=g).to(torch.bfloat16),
        "layers.1.recurrent": torch.randn(4, 32, 32, generator=g).to(torch.bfloat16),
        "n_tokens": torch.tensor(turn * PAGE_TOKENS),
    }


def expected_page(turn: int) -> Page:
    g = torch.Generator().manual_seed(1_000_000 + turn)
    kv = torch.randn(2, PAGE_TOKENS, 8, 32, generator=g).to(torch.bfloat16)  # 16 KiB
    return Page((turn - 1) * PAGE_TOKENS, turn * PAGE_TOKENS, {"layers.2.k": kv[0], "layers.2.v": kv[1]})


def save(store: Store, sid: str, turn: int) -> None:
    store.save_turn(
        sid,
        turn,
        events=[Event("user", f"message {turn}"), Event("assistant", f"reply {turn}")],
        recurrent=expected_recurrent(turn),
        pages=[expected_page(turn)],
        n_tokens=turn * PAGE_TOKENS,
    )
    os.write(1, f"committed {turn} {time.monotonic()}\n".encode())


def write(url: str, sid: str, n_turns: int | None, *, wait_for_go: bool = False) -> None:
    torch.set_num_threads(1)
    store = Store(url)
    if sid == "new":
        sid = store.create_session("writer", "/w", "fp").id
        os.write(1, f"session {sid}\n".encode())
    if wait_for_go:  # a start line shared with other writers, so that they really write at once
        os.write(1, b"ready\n")
        sys.stdin.readline()
        os.write(1, f"started {time.monotonic()}\n".encode())
    first = (store.get_session(sid).latest_turn or 0) + 1
    turn = first
    while n_turns is None or turn < first + n_turns:
        save(store, sid, turn)
        turn += 1
    store.close()


def zygote(url: str, sid: str) -> None:
    for line in sys.stdin:
        if line.strip() != "spawn":
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                write(url, sid, None)
            except BaseException as exc:
                os.write(1, f"error {exc!r}\n".encode())
                code = 1
            os._exit(code)
        os.write(1, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exited {status}\n".encode())


if __name__ == "__main__":
    mode, url, sid = sys.argv[1:4]
    if mode == "zygote":
        zygote(url, sid)
    else:
        try:
            write(url, sid, int(sys.argv[4]), wait_for_go=True)
        except BaseException as exc:
            os.write(1, f"error {exc!r}\n".encode())
            raise
