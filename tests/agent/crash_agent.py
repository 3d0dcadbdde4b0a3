"""Helper process of tests/agent/test_agent_crash.py (not a test module itself): an agent (the scripted
engine of tests/agent/conftest.py over the real Store, tool registry and workspace) that SIGKILLs itself
at a chosen point of a turn.

    python crash_agent.py
        Reads "POINT DB WORKSPACE" lines from stdin. For each, forks a child that runs the agent until
        it kills itself at POINT; the child prints "session ID" before the killed turn starts, then
        this process prints "exited STATUS" (the child's wait status). Forking from this process,
        which imported torch and the agent but never ran them, makes a run cost milliseconds instead
        of a new interpreter's seconds.

POINT:
    after-write   turn 1 writes a.txt with write_file; killed as the turn's save begins
    before-write  turn 1 creates b.txt and is saved; turn 2 is killed as write_file is about to
                  replace a.txt (after anything journaled ahead of it, before the file changes)
    decoding      killed while the model writes its first reply: no tool ran, nothing was saved

"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ScriptedEngine
from hybrid_agent.agent.loop import Agent
from hybrid_agent.memory import Store


def call(name: str, **arguments: str) -> str:
    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"


def die(*_: object, **__: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def run(point: str, db: str, workspace: str) -> None:
    replies = {
        "after-write": [call("write_file", path="a.txt", content="changed\n"), "Done.<|end|>"],
        "before-write": [call("write_file", path="b.txt", content="first\n"), "Made b.<|end|>",
                         call("write_file", path="a.txt", content="changed\n"), "Done.<|end|>"],
        "decoding": ["Hello there.<|end|>"],
    }[point]  # fmt: skip
    engine = ScriptedEngine(replies)
    agent = Agent(engine, Store(db), workspace=workspace, mode="auto")
    if point == "before-write":
        list(agent.send_sync("make b"))
        os.rename = die  # the workspace replaces a file by renaming its new copy over it
    elif point == "after-write":
        save = Store.save_turn

        def save_or_die(store: Store, session_id: str, *args: object, **kwargs: object) -> object:
            if session_id == agent.session_id:  # not the system prompt's state (agent/prefix_cache.py)
                die()
            return save(store, session_id, *args, **kwargs)  # type: ignore[arg-type]

        Store.save_turn = save_or_die  # type: ignore[method-assign,assignment]
    else:
        engine.step_hook = die
    os.write(1, f"session {agent.session_id}\n".encode())
    list(agent.send_sync("change a"))
    os.write(1, b"not killed\n")


def main() -> None:
    for line in sys.stdin:
        point, db, workspace = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(point, db, workspace)
            except BaseException as exc:
                os.write(1, f"error {exc!r}\n".encode())
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exited {status}\n".encode())


if __name__ == "__main__":
    main()
