"""`hybrid-agent acp` with the scripted engine of tests/agent/conftest.py instead of the model (the
helper process of tests/agent/test_acp.py, not a test module itself): the same command, server,
settings, store, tools and transport; only the model's replies are chosen by the test.

    python acp_scripted.py SCRIPT.json acp --db DB [options of hybrid-agent acp]

SCRIPT.json: {"replies": [reply, ...], "step_delay": seconds per decoded token (default 0)}. The
replies are shared by every session of the process, in order; past the last, a reply is `<|end|>`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ScriptedEngine
from hybrid_agent.agent.acp_commands import cmd_acp
from hybrid_agent.agent.cli import parse_args
from hybrid_agent.agent.commands import run_command


def main() -> int:
    script = json.loads(Path(sys.argv[1]).read_text())
    replies: list[str] = list(script["replies"])
    delay = float(script.get("step_delay", 0))

    def engine() -> Any:
        made = ScriptedEngine()
        made.replies = replies  # one queue for every session
        if delay:
            made.step_hook = lambda _: time.sleep(delay)
        return made

    args = parse_args(sys.argv[2:])
    return run_command(lambda a: cmd_acp(a, engines=engine), args)


if __name__ == "__main__":
    sys.exit(main())
