"""The `hybrid-agent` command line.

Parsing only here; each subcommand imports what it needs when it runs, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-agent",
        description="A coding agent on a hybrid language model whose state is saved after every turn.",
    )
    parser.add_argument("--version", action="version", version="hybrid-agent 0.1.0")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run one turn headless and print the answer")
    sub.add_parser("sessions", help="list, show, fork, remove or export saved sessions")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"hybrid-agent: '{args.command}' is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
