"""Session ids as people type them: the whole id, or a unique prefix of it (the notices show 8 characters).

One resolution for every entry point (the CLI's `--resume` and `sessions ...`, `Agent.open(resume=...)`,
`Agent.resume`, the UI's `/resume ID`), so a prefix means the same session everywhere.
"""

from __future__ import annotations

from typing import Any

from hybrid_agent.agent.errors import AgentError

# `--resume` given without an id: the UI opens its session picker, `run` asks for an id.
PICK_SESSION = ""


def resolve_session_id(store: Any, given: str) -> str:
    """A full session id, from the id or a unique prefix of it."""
    ids = [s.id for s in store.list_sessions()]
    if given in ids:
        return given
    matches = [i for i in ids if given and i.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AgentError(f"no session {given!r}; `hybrid-agent sessions list` shows the saved ones")
    raise AgentError(f"{given!r} matches {len(matches)} sessions; give more of the id")
