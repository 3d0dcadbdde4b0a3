"""Run several turns of one session in THIS process, then exit (used by the end-to-end tests).

    python tests/agent/drive_session.py MODEL DB WORKSPACE [--window N] [--resume ID] PROMPT...

Prints one JSON line per turn: session id, turn, the assistant's raw text (markup included) and the
turn-end numbers.

    python tests/agent/drive_session.py --serve

Reads one JSON list of arguments a line from stdin. For each, forks a child that runs them (this
script's own arguments, or ["cli", ...]: the `hybrid-agent` command line) and exits; the child's
output comes first, then this process prints "exited STATUS" (the child's wait status). Forking from
this process, which imported torch and the agent but never ran them, makes each run a new process that
starts in milliseconds instead of a new interpreter's seconds (as tests/agent/crash_agent.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hybrid_agent.agent import Agent
from hybrid_agent.agent.events import TurnEnd


def serve() -> None:
    import torch._dynamo  # noqa: F401  (torch.nn.init imports it on a model's first init: ~1.5 s)
    from hybrid_agent.agent import factory  # noqa: F401  (what `run` imports when it starts)

    from hybrid_agent import cli

    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the requests are not the child's input
            sys.stdin = open(os.devnull)  # noqa: SIM115
            try:
                code = cli.main(argv[1:]) if argv[:1] == ["cli"] else main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException as exc:
                print(f"error {exc!r}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code or 0)
        _, status = os.waitpid(pid, 0)
        print(f"exited {status}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("db")
    p.add_argument("workspace")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--window", type=int)
    p.add_argument("--resume")
    p.add_argument("--max-new-tokens", type=int, default=12)
    a = p.parse_args(argv)
    agent = Agent.open(model=a.model, db=a.db, workspace=a.workspace, window=a.window, resume=a.resume,
                       max_new_tokens=a.max_new_tokens)  # fmt: skip
    try:
        for prompt in a.prompts:
            end = [e for e in agent.send_sync(prompt) if isinstance(e, TurnEnd)][-1]
            raw = [e.data["raw"] for e in agent.history() if e.kind == "assistant" and e.turn == end.turn]
            print(
                json.dumps({"session_id": agent.session_id, "turn": end.turn, "raw": raw, **end.model_dump()})
            )
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
