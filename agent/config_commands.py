"""The settings on the command line: flags over the settings files (agent/settings.py), `config show`,
`config path`, `trust`, and `--continue`.

A flag the user gave wins; a flag not given takes the settings' value, and without one the built-in
default (DEFAULTS). Warnings about an untrusted folder's files are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hybrid_agent.agent.errors import AgentError, printable
from hybrid_agent.agent.settings import Settings, flat, is_trusted, load_settings, settings_paths, trust

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


def settle(args: argparse.Namespace) -> Settings:
    """Fill the flags of `args` that were not given from the settings files of its workspace (once);
    the merged settings are kept on `args` for the permission rules and `config show`."""
    done = getattr(args, "settings_", None)
    if done is not None:
        return done
    given = {key: getattr(args, key, None) for key in SETTING_FLAGS}
    settings = load_settings(getattr(args, "workspace", "."), given)
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


def continued_session(store: Any, args: argparse.Namespace) -> str | None:
    """With `--continue`: the id of the workspace's most recent session (None without the flag)."""
    if not getattr(args, "continue_", False):
        return None
    if getattr(args, "resume", None):
        raise AgentError("give --resume ID or --continue, not both")
    here = Path(args.workspace).expanduser().resolve()
    for info in store.list_sessions():  # most recent first
        if Path(info.workspace).resolve() == here:
            return str(info.id)
    raise AgentError(f"no saved session in {here} to continue; start one without --continue")


# ---- config, trust -------------------------------------------------------------------------------
def _toml(value: Any) -> str:
    """`value` written as TOML (inline tables and arrays), for `config show`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)


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
        print(printable(f"{key} = {_toml(value)}  # {source}"))
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    path, new = trust(args.dir or args.workspace)
    what = "now trusted" if new else "already trusted"
    print(printable(f"{path} is {what}: its settings files may add hooks, MCP servers, allow rules"))
    return 0
