"""Run several turns of one session in THIS process, then exit (used by the end-to-end tests).

    python tests/agent/drive_session.py MODEL DB WORKSPACE [--window N] [--resume ID] PROMPT...

Prints one JSON line per turn: session id, turn, the assistant's raw text (markup included) and the
turn-end numbers.
"""

from __future__ import annotations

import argparse
import json

from hybrid_agent.agent import Agent
from hybrid_agent.agent.events import TurnEnd


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("db")
    p.add_argument("workspace")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--window", type=int)
    p.add_argument("--resume")
    p.add_argument("--max-new-tokens", type=int, default=12)
    a = p.parse_args()
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


if __name__ == "__main__":
    main()
