"""`hybrid-agent acp` processes for tests/agent/test_acp.py (not a test module itself).

    python acp_scripted.py

Reads one JSON request a line from stdin: {"argv": [...], "in": FIFO, "out": FIFO, "err": FILE,
"script": SCRIPT.json or null}. For each, forks a child whose stdin, stdout and stderr are those
files, which runs `hybrid-agent ARGV...` (hybrid_agent/cli.py's `main`, the command itself), and
prints "pid PID". With a script, the child's model is the scripted engine of tests/agent/conftest.py
(`cmd_acp`'s `engines`): the same command, server, settings, store, tools and transport, only the
model's replies chosen by the test. Forking from this process, which imported torch, the SDK and
the agent but never ran them, makes each server start in milliseconds, not a new interpreter's
seconds (as tests/agent/drive_session.py does).

SCRIPT.json: {"replies": [reply, ...], "step_delay": seconds per decoded token (default 0),
"noise": true to print to stdout at every decoded token}. The
replies are shared by every session of the process, in order; past the last, a reply is `<|end|>`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ScriptedEngine
from hybrid_agent.agent import acp_commands


def scripted(script: dict[str, Any]) -> Any:
    replies: list[str] = list(script["replies"])
    delay = float(script.get("step_delay", 0))
    noise = bool(script.get("noise"))

    def step(_: int) -> None:
        time.sleep(delay)
        if noise:  # what a careless library does: print, and write to descriptor 1
            print("noise from print")
            os.write(1, b"noise on fd 1\n")

    def engine() -> Any:
        made = ScriptedEngine()
        made.replies = replies  # one queue for every session
        if delay or noise:
            made.step_hook = step
        return made

    return engine


def child(request: dict[str, Any]) -> int:
    os.dup2(os.open(request["in"], os.O_RDONLY), 0)
    os.dup2(os.open(request["out"], os.O_WRONLY), 1)
    os.dup2(os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    if request.get("script"):
        engines = scripted(json.loads(Path(request["script"]).read_text()))
        original = acp_commands.cmd_acp
        acp_commands.cmd_acp = lambda args: original(args, engines=engines)  # type: ignore[assignment]
    from hybrid_agent import cli

    return cli.main(request["argv"])


def serve() -> None:
    import torch._dynamo  # noqa: F401  (torch.nn.init imports it on a model's first init: ~1.5 s)
    from hybrid_agent.agent import acp_server, factory  # noqa: F401  (what `acp` imports when it starts)
    from hybrid_agent.agent.loop import Agent  # noqa: F401
    from hybrid_agent.model import load_model  # noqa: F401  (what the first session imports)
    from hybrid_agent.tools import ToolRegistry  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException as exc:
                print(f"error {exc!r}", file=sys.stderr)
            finally:
                sys.stderr.flush()
            os._exit(code or 0)
        print(f"pid {pid}", flush=True)


if __name__ == "__main__":
    serve()
