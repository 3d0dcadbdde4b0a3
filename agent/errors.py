"""Errors a user of `agent/` can cause, each with a message that says what to do; and `printable`,
which every line the CLI shows a user goes through."""

from __future__ import annotations

import re


class AgentError(Exception):
    """Base class of every error raised on purpose by `agent/` (the CLI prints it without a traceback)."""


class AgentBusyError(AgentError):
    """A turn is running; the operation must wait for it (or cancel it)."""


class ModelNotFoundError(AgentError):
    """No model at the given path, and no packaged default model."""


class StateLayoutError(AgentError):
    """A snapshot's stored state layout (how its tensors are laid out) is not the loaded model's."""


# C0 controls but newline and tab, DEL, and C1 controls: with them, a title, a message or a tool's
# output could move the cursor, rewrite the screen or set the window title (ESC [ ..., ESC ] ..., CSI).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters written out as `\\xNN` (newline and tab kept).
    Used for every human-readable line the CLI prints; `--json` output is exact (JSON escapes them)."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
