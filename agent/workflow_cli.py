"""The parsers of the workflow commands: `sessions diff`, `undo`, `rewind` (agent/undo_commands.py),
`sessions export` and `sessions import` (agent/transfer.py), and `run`'s headless options
(agent/headless.py). Only argparse here, so that `--help` stays instant.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_undo(sub: Any, sessions: Any, shared: argparse.ArgumentParser, count: Any) -> None:
    """`undo` and `rewind` under `sub` (the commands), `diff` under `sessions`' actions
    (agent/undo_commands.py)."""
    diff = sessions.add_parser(
        "diff", parents=[shared], help="a session's file changes as a unified diff (from its undo journal)"
    )
    diff.add_argument("id")
    diff.add_argument("--turn", type=count, metavar="N", help="only turn N's changes (default: all)")
    undo = sub.add_parser("undo", parents=[shared], help="revert the file changes of a session's last turn")
    undo.add_argument("id")
    _force(undo)
    rewind = sub.add_parser(
        "rewind",
        parents=[shared],
        help="take a session back to turn N in place: its model state and its files",
    )
    rewind.add_argument("id")
    rewind.add_argument("--turn", type=count, required=True, metavar="N", help="the turn to go back to")
    only = rewind.add_mutually_exclusive_group()
    only.add_argument("--files-only", action="store_true", help="revert the files, keep the model state")
    only.add_argument("--state-only", action="store_true", help="rewind the model state, keep the files")
    _force(rewind)


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="also revert files changed outside the agent since (their edits are lost)",
    )


def add_transfer(sessions: Any, shared: argparse.ArgumentParser) -> None:
    """`sessions export` and `sessions import` (agent/transfer.py)."""
    export = sessions.add_parser(
        "export", parents=[shared], help="a session's events (jsonl), as one JSON object, or as Markdown"
    )
    export.add_argument("id")
    export.add_argument(
        "--format",
        choices=("jsonl", "json", "md"),
        default="jsonl",
        help="jsonl: the stored events, a line each (default); json: one object that `sessions import` "
        "reads; md: the readable transcript",
    )
    imp = sessions.add_parser(
        "import",
        parents=[shared],
        help="a new session from an exported FILE.json (text only: the state is rebuilt on its first turn)",
    )
    imp.add_argument("file", metavar="FILE.json")


def add_headless(run: argparse.ArgumentParser) -> None:
    """`run`'s output and input formats (agent/headless.py; docs/headless.md)."""
    run.add_argument(
        "--output-format",
        choices=("text", "json", "stream-json"),
        default="text",
        help="text: the answer as it streams (default); json: one result object at the end; stream-json: "
        "Claude Code's objects, one a line (docs/headless.md)",
    )
    run.add_argument(
        "--input-format",
        choices=("text", "stream-json"),
        default="text",
        help="stream-json: read user messages from stdin, one JSON object a line, each a turn",
    )
    run.add_argument(
        "--include-partial-messages",
        action="store_true",
        help="with stream-json: also print the text as it is decoded (stream_event deltas)",
    )
    run.add_argument("--json", action="store_true", help="the same as --output-format stream-json")
