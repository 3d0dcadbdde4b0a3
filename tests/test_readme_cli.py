"""The README's usage section must not drift from the command line: every option and subcommand that
`hybrid-agent` accepts is named there."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from hybrid_agent.agent.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _walk(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    options: set[str] = set()
    commands: set[str] = set()
    for action in parser._actions:
        options.update(o for o in action.option_strings if o.startswith("--") and o not in ("--help",))
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.add(name)
                sub_options, sub_commands = _walk(sub)
                options |= sub_options
                commands |= sub_commands
    return options, commands


def test_every_option_and_command_is_in_the_readme() -> None:
    options, commands = _walk(build_parser())
    assert {"run", "sessions", "list", "fork"} <= commands  # the walk sees the real parser
    named = lambda word: re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", README) is not None
    missing = sorted(word for word in options | commands if not named(word))
    assert not missing, f"README.md does not mention: {missing}"
