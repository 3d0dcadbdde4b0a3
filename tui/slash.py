"""Slash commands: the table, parsing and completion.

Pure functions, no Textual: the input widget completes from `complete()`, the app dispatches on
`parse()`. Keeping the table here means the help screen, the completion list and the command
palette can never disagree about which commands exist.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class SlashCommandError(ValueError):
    """A slash command the user typed cannot be run as written; the message says how to fix it."""


@dataclass(frozen=True)
class SlashCommand:
    name: str  # without the slash
    usage: str
    help: str


SLASH_COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("new", "/new", "start a new session"),
    SlashCommand("resume", "/resume [ID]", "open the session browser, or resume session ID"),
    SlashCommand("fork", "/fork [N]", "fork this session at turn N (default: the latest turn)"),
    SlashCommand("rewind", "/rewind N [files]", "go back to turn N ('files' also reverts file edits)"),
    SlashCommand("undo", "/undo", "undo the last file change"),
    SlashCommand("diff", "/diff [N]", "show the session's file changes (turn N's with N)"),
    SlashCommand("tools", "/tools", "list the tools the model can call"),
    SlashCommand("model", "/model", "show the model, device and state"),
    SlashCommand("status", "/status", "what the session uses: state, cache, disk, speed, time, git"),
    SlashCommand("memory", "/memory [reload]", "the AGENTS.md the session read; 'reload' sends the new text"),
    SlashCommand("copy", "/copy", "copy the last answer to the clipboard"),
    SlashCommand("help", "/help", "show key bindings and commands"),
    SlashCommand("quit", "/quit", "save and quit"),
)

_BY_NAME = {c.name: c for c in SLASH_COMMANDS}


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: tuple[str, ...]


def is_slash_command(text: str) -> bool:
    """A message is a command when it starts with '/' and a letter, and names a known command or
    looks like a mistyped one: '/word' alone, or a first word close to a command ('/rewnd 3'). Every
    message that enters the model stays in the session's state, so a typo is stopped here, while
    '/etc/hosts is odd' or '/usr is full' still go to the model."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2 or not stripped[1].isalpha():
        return False
    first = stripped[1:].split()[0]
    if first in _BY_NAME:
        return True
    if not first.replace("-", "").isalpha():  # '/etc/hosts', '/tmp.' ...: a path, not a command
        return False
    return len(stripped.split()) == 1 or bool(_close(first))


def _close(name: str) -> list[str]:
    return difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.75)


def parse(text: str) -> ParsedCommand:
    """Parse '/name arg ...'; raise SlashCommandError on an unknown name or bad arguments."""
    parts = text.strip().split()
    if not parts or not parts[0].startswith("/"):
        raise SlashCommandError(f"not a command: {text!r}; commands start with '/', try /help")
    name, args = parts[0][1:], tuple(parts[1:])
    if name not in _BY_NAME:
        hint = f"did you mean /{close[0]}? " if (close := _close(name)) else ""
        raise SlashCommandError(
            f"unknown command /{name}; {hint}/help lists them (to send it to the model as a message, "
            "put a word before it)"
        )
    if name in ("fork", "rewind", "diff") and args and not args[0].isdigit():
        raise SlashCommandError(f"usage: {_BY_NAME[name].usage} (N is a turn number)")
    if name == "memory" and args not in ((), ("reload",)):
        raise SlashCommandError(f"usage: {_BY_NAME[name].usage}")
    if name == "rewind" and not args:
        raise SlashCommandError(f"usage: {_BY_NAME[name].usage}")
    return ParsedCommand(name, args)


def complete(prefix: str) -> list[SlashCommand]:
    """The commands whose '/name' starts with `prefix` (which includes the slash)."""
    if not prefix.startswith("/") or " " in prefix:
        return []
    return [c for c in SLASH_COMMANDS if ("/" + c.name).startswith(prefix)]
