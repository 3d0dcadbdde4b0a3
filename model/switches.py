"""On/off switches read from the environment (the `HYBRID_AGENT_*` variables the README and
docs/design.md name): one spelling for all of them, so that `off` means the same everywhere."""

from __future__ import annotations

import os

from hybrid_agent.model.errors import SwitchError

ON = frozenset({"1", "true", "yes", "on"})
OFF = frozenset({"0", "false", "no", "off"})


def env_switch(name: str, value: str | None = None) -> bool | None:
    """`value` (else the variable `name`) as a switch: True for 1/true/yes/on, False for 0/false/no/off
    (any case, spaces ignored), None when unset, empty or "auto" (the caller's default). Anything else
    is a SwitchError (a ValueError) naming the variable and what it takes."""
    raw = (os.environ.get(name, "") if value is None else value).strip().lower()
    if raw in ON:
        return True
    if raw in OFF:
        return False
    if raw in ("", "auto"):
        return None
    raise SwitchError(f"{name} takes 1, 0 or auto (unset: auto); got {raw!r}")
