"""The `hybrid-agent` command line.

Parsing only here; the commands live in agent/commands.py and import what they need when they run,
so `--help` is instant. The `hybrid-agent` command itself is hybrid_agent/cli.py's `main`: it parses
with this module and also opens the terminal UI, which sits above agent/. Errors a user can cause
print one line and exit 1 (no traceback unless `--debug`); Ctrl-C exits 130 and leaves the session at
its last saved turn.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

from hybrid_agent.agent.session_ids import PICK_SESSION

from hybrid_agent import __version__


def _number(kind: type, low: float, what: str, high: float = 2**31 - 1) -> Callable[[str], float]:
    """An argparse type: a finite `kind` in [low, high], else argparse's one-line usage error (nan and
    inf are refused everywhere: `nan < 0` is false, so a bare lower bound would let them through)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


EXIT_USAGE = 2  # as argparse exits on a usage error
NO_COMMAND = (
    "hybrid-agent: hybrid_agent.agent.cli runs the commands (run, sessions, undo, rewind, config, trust, "
    "mcp, pull, acp, serve) only; the terminal UI opens from hybrid_agent.cli (the `hybrid-agent` command)"
)

_COUNT = _number(int, 0, "a whole number >= 0")
_POSITIVE = _number(int, 1, "a whole number >= 1")
_SEED = _number(int, 0, "a whole number from 0 to 2**63 - 1", 2**63 - 1)
_TEMPERATURE = _number(float, 0.0, "a number >= 0 and <= 100", 100.0)


def _shared(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand. On subcommands they default to SUPPRESS, so
    an option given before the subcommand is not reset by the subcommand's default."""
    p = argparse.ArgumentParser(add_help=False, argument_default=None if defaults else argparse.SUPPRESS)
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument(
        "--model",
        metavar="PATH",
        default=d(None),
        help="model folder (config.json + safetensors) or Hub id; default: the packaged model",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        default=d(None),
        help="session database: an SQLite file path or a postgresql:// URL (default: under XDG_DATA_HOME)",
    )
    p.add_argument(
        "--workspace",
        metavar="DIR",
        default=d("."),
        help="the folder the tools may read and change (default: current directory)",
    )
    p.add_argument("--device", default=d(None), help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--tp",
        type=_number(int, 1, "a whole number from 1 to 64", 64),
        metavar="N",
        default=d(1),
        help="tensor parallel: split the model over N processes (N cards with --device cuda, else the "
        "CPU over gloo); this one runs the agent (default: 1)",
    )
    p.add_argument(
        "--window",
        type=_POSITIVE,
        metavar="N",
        default=d(None),
        help="attention window in tokens (constant memory); default: full attention, or a resumed "
        "session's own",
    )
    p.add_argument(
        "--sinks",
        type=_COUNT,
        metavar="N",
        default=d(None),
        help="sink tokens kept with --window (default: 4)",
    )
    p.add_argument("--seed", type=_SEED, default=d(None), help="seed for sampling")
    p.add_argument("--temperature", type=_TEMPERATURE, default=d(None), help="0 = greedy (default)")
    p.add_argument(
        "--max-new-tokens", type=_POSITIVE, metavar="N", default=d(None), help="per turn (default: 1024)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=_POSITIVE,
        metavar="N",
        default=d(None),
        help="refuse a message (or tool output) longer than N tokens "
        "(default: 32768; longer ones would take minutes and gigabytes to read)",
    )
    p.add_argument(
        "--enable-commands",
        action="store_true",
        default=d(None),
        help="give the model the run_command tool (asks before each command)",
    )
    p.add_argument("--debug", action="store_true", default=d(False), help="show tracebacks")
    return p  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-agent",
        description="A coding agent on a hybrid language model whose state is saved after every turn. "
        "Without a command: open the terminal UI.",
        parents=[_shared(True)],
    )
    parser.add_argument("--version", action="version", version=f"hybrid-agent {__version__}")
    parser.add_argument(
        "--resume",
        metavar="ID",
        nargs="?",
        const=PICK_SESSION,
        help="continue a saved session (id or unique prefix); without ID, open the session picker",
    )
    _session_options(parser, True)
    commands = "{run,sessions,undo,rewind,config,trust,mcp,pull,acp,serve}"
    sub = parser.add_subparsers(dest="command", metavar=commands)
    shared = _shared(False)

    from hybrid_agent.agent.workflow_cli import add_headless, add_transfer, add_undo

    run = sub.add_parser("run", parents=[shared], help="run one turn headless and print the answer")
    run.add_argument(
        "prompt",
        nargs="*",
        help="the message to send; several are joined by blank lines, and '-' stands for all of stdin "
        "(cat error.log | hybrid-agent run 'why does this fail?' -)",
    )
    add_headless(run)
    run.add_argument("--yes", "-y", action="store_true", help="approve every tool call")
    run.add_argument(
        "--resume",
        metavar="ID",
        nargs="?",
        const=PICK_SESSION,
        default=argparse.SUPPRESS,
        help="continue a saved session (id or unique prefix)",
    )
    _session_options(run, False)

    sessions = sub.add_parser(
        "sessions",
        parents=[shared],
        help="list, show, diff, fork, remove, export, import, check or compact sessions",
    )
    # `sessions` alone lists them (as `git remote` does), so --json works there too.
    sessions.add_argument("--json", action="store_true", help="with no action: list as JSON lines")
    ssub = sessions.add_subparsers(dest="action", metavar="{list,show,diff,fork,rm,export,import,check,gc}")
    ls = ssub.add_parser("list", parents=[shared], help="saved sessions, most recent first")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = ssub.add_parser("show", parents=[shared], help="a session's details and conversation")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the details as one JSON object")
    fork = ssub.add_parser("fork", parents=[shared], help="a new session from a session's turn N")
    fork.add_argument("id")
    fork.add_argument("--turn", type=_COUNT, required=True, metavar="N")
    rm = ssub.add_parser("rm", parents=[shared], help="delete a session (its forks keep working)")
    rm.add_argument("id")
    add_transfer(ssub, shared)
    check = ssub.add_parser(
        "check",
        parents=[shared],
        help="verify the database file, the sessions' indexes and every stored byte",
    )
    check.add_argument("id", nargs="?", help="only this session (and the bytes it uses)")
    ssub.add_parser(
        "gc", parents=[shared], help="delete unreferenced data and give the freed space back to the disk"
    )

    config = sub.add_parser("config", parents=[shared], help="the settings files and what they set")
    config.add_argument("--json", action="store_true", help="with no action: show as JSON")
    csub = config.add_subparsers(dest="action", metavar="{show,path}")
    cshow = csub.add_parser(
        "show", parents=[shared], help="the merged settings, each value with the file it came from"
    )
    cshow.add_argument("--json", action="store_true", help="as one JSON object")
    csub.add_parser("path", parents=[shared], help="the user, project and local settings files")
    trust = sub.add_parser(
        "trust",
        parents=[shared],
        help="trust a folder: its settings may add hooks, MCP servers, allow rules, sandbox relaxations",
    )
    trust.add_argument("dir", nargs="?", metavar="DIR", help="the folder (default: --workspace)")
    from hybrid_agent.agent.mcp_commands import add_parser as add_mcp

    add_undo(sub, ssub, shared, _COUNT)
    add_mcp(sub, shared)
    from hybrid_agent.agent.pull_command import add_parser as add_pull

    add_pull(sub)
    from hybrid_agent.agent.acp_commands import add_parser as add_acp

    add_acp(sub, shared)
    from hybrid_agent.agent.serve_command import add_parser as add_serve

    add_serve(sub, shared)
    return parser


def _session_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Options of the commands that run a session: the terminal UI and `run`."""
    p.add_argument(
        "--permission-mode",
        choices=("ask", "accept-edits", "auto", "plan"),
        default=None if defaults else argparse.SUPPRESS,
        help="when tools ask before they run; plan: read-only tools only, the answer is a plan "
        "(default: ask, or the settings' permission_mode)",
    )
    p.add_argument(
        "-c",
        "--continue",
        dest="continue_",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="continue the most recent session of the workspace",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed after the process set-up that every command needs."""
    # On a small CPU, OpenMP threads that spin while they wait stall every matmul as soon as another
    # process is busy: 15.7 vs 91.1 tok/s with one busy process, 136.8 vs 120.3 on a quiet machine
    # (bench/results/cpu_decode_s3_lead.json, same tokens and logits). Set before torch loads libgomp;
    # the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and not args.prompt and args.input_format == "text":
        parser.error("run: the following arguments are required: prompt (or --input-format stream-json)")
    return args


def main(argv: list[str] | None = None) -> int:
    """`hybrid-agent run|sessions|config|trust|mcp|pull ...` in this process. Without a command
    (the terminal UI) it refuses: tui/ sits above agent/, so hybrid_agent/cli.py opens the UI."""
    args = parse_args(argv)
    if args.command is None:
        print(NO_COMMAND, file=sys.stderr)
        return EXIT_USAGE
    from hybrid_agent.agent.commands import dispatch

    return dispatch(args)
