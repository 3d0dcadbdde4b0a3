"""The settings on the command line: flags over the settings files (agent/settings.py), `config show`,
`config path`, `trust`, and `--continue`.

A flag the user gave wins; a flag not given takes the settings' value, and without one the built-in
default (DEFAULTS). Warnings about an untrusted folder's files are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable
from hybrid_agent.agent.settings import (
    Settings,
    flat,
    is_trusted,
    load_settings,
    settings_paths,
    toml_value,
    trust,
)  # fmt: skip

# The flags the settings files may give a default for, and the defaults when neither does.
SETTING_FLAGS = (
    "model", "db", "device", "window", "sinks", "temperature", "max_new_tokens", "permission_mode",
    "enable_commands",
)  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "sinks": 4,
    "temperature": 0.0,
    "max_new_tokens": 1024,
    "permission_mode": "ask",
    "enable_commands": False,
}


def _warn(line: str) -> None:
    print(printable(f"hybrid-agent: warning: {line}"), file=sys.stderr, flush=True)


@dataclass
class TrustQuestion:
    """What the terminal UI asks before it opens a folder whose project or local settings need trust
    (tui/screens/trust.py): `files` lists, per file, what it would enable. `accept()` records the
    trust as `hybrid-agent trust` does and returns the agent's options again, with those settings."""

    folder: Path
    files: list[tuple[Path, list[str]]]
    reopen: Callable[[], dict[str, Any]]

    def accept(self) -> dict[str, Any]:
        trust(self.folder)
        return self.reopen()


def trust_question(
    args: argparse.Namespace, options: Callable[[argparse.Namespace], dict[str, Any]]
) -> TrustQuestion | None:
    """The question for the UI when the settings of `args`' workspace were cut down for want of trust,
    else None. `options(args)` makes the agent's options (agent/commands.py's `tui_options`): called
    again, with the settings read anew, once the user trusts the folder."""
    settings = settle(args)
    if not settings.untrusted:
        return None

    def reopen() -> dict[str, Any]:
        args.settings_ = None  # read the files again: now trusted, nothing is cut
        return options(args)

    return TrustQuestion(Path(args.workspace).expanduser().resolve(), settings.untrusted, reopen)


def settle(args: argparse.Namespace, *, quiet: bool = False) -> Settings:
    """Fill the flags of `args` that were not given from the settings files of its workspace (once);
    the merged settings are kept on `args` for the permission rules and `config show`. The warnings
    about an untrusted folder are printed unless `quiet` (the terminal UI asks instead:
    `trust_question`)."""
    done = getattr(args, "settings_", None)
    if done is not None:
        return done
    given = {key: getattr(args, key, None) for key in SETTING_FLAGS}
    workspace = getattr(args, "workspace", ".")
    settings = load_settings(workspace, given)
    if not quiet:
        for warning in settings.warnings:
            _warn(warning)
    for key in SETTING_FLAGS:
        setattr(args, key, settings.get(key, DEFAULTS.get(key)))
    args.settings_ = settings
    return settings


def permission_rules(args: argparse.Namespace) -> Any:
    """The allow/ask/deny rules of the settings, for `Agent.open(permissions=...)`."""
    from hybrid_agent.agent.permissions import PermissionRules

    return PermissionRules.from_settings(settle(args), args.workspace)


def hook_set(args: argparse.Namespace) -> Any:
    """The hooks of the settings (agent/hooks.py), for `Agent.open(hooks=...)`. Hooks from an untrusted
    folder's files were already dropped by `load_settings`."""
    from hybrid_agent.agent.hooks import Hooks

    return Hooks.from_settings(settle(args), args.workspace)


def sandbox_policy(args: argparse.Namespace) -> Any:
    """The sandbox of run_command (tools/sandbox.py) from the settings: `sandbox` (default
    workspace-write), `sandbox_network`, `sandbox_allow_read`. Relaxations from an untrusted
    folder's files were already dropped by `load_settings`."""
    from hybrid_agent.tools.sandbox import SandboxPolicy

    settings = settle(args)
    return SandboxPolicy(
        mode=settings.get("sandbox") or "workspace-write",
        network=bool(settings.get("sandbox_network")),
        allow_read=tuple(settings.get("sandbox_allow_read") or ()),
    )


def continued_session(store: Any, args: argparse.Namespace) -> str | None:
    """With `--continue`: the id of the workspace's most recent session (None without the flag)."""
    if not getattr(args, "continue_", False):
        return None
    if getattr(args, "resume", None) is not None:
        raise AgentError("give --resume ID or --continue, not both")
    here = Path(args.workspace).expanduser().resolve()
    for info in store.list_sessions():  # most recent first
        if Path(info.workspace).resolve() == here:
            return str(info.id)
    raise AgentError(f"no saved session in {here} to continue; start one without --continue")


# ---- config, trust -------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    paths = settings_paths(args.workspace)
    if args.action == "path":
        for layer, path in paths.items():
            print(printable(f"{layer:8} {path}"))
        return 0
    settings = settle(args)
    trusted = is_trusted(args.workspace)
    if args.json:
        files = {layer: {"path": str(p), "exists": p.is_file()} for layer, p in paths.items()}
        values = [{"key": k, "value": v, "source": s} for k, v, s in flat(settings)]
        data = {"files": files, "trusted": trusted, "values": values, "warnings": settings.warnings}
        print(json.dumps(data, ensure_ascii=False))
        return 0
    for layer, path in paths.items():
        print(printable(f"# {layer}: {path}{'' if path.is_file() else ' (none)'}"))
    print(f"# this folder is {'trusted' if trusted else 'not trusted'}")
    rows = flat(settings)
    if not rows:
        print("# nothing set: every option has its built-in default")
    for key, value, source in rows:
        print(printable(f"{key} = {toml_value(value)}  # {source}"))
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    path, new = trust(args.dir or args.workspace)
    what = "now trusted" if new else "already trusted"
    print(printable(f"{path} is {what}: its settings files may add hooks, MCP servers, allow rules"))
    return 0
