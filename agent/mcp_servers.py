"""MCP servers from the settings (`mcp_servers` in agent/settings.py): writing entries into a settings
file, expanding `${VAR}` when a server starts, and mounting the servers into a ToolRegistry.

- `${VAR}` in command, args, env, url and headers is replaced from the environment when the server
  starts, never when the entry is written, so secrets stay out of the files. A variable that is not
  set is one error line for that server.
- Mounting is best effort: a server that fails to start (or whose variables are missing) is reported
  in `registry.plugin_errors`, which `run` prints on stderr and the UI shows, and the session goes on
  without it. Its tools are registered as `SERVER__TOOL` (tools/mcp_client.py) and named
  `mcp__SERVER__TOOL` in permission rules (agent/permissions.py's `rule_name`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.settings import read_file, replace_file, toml_value

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
START_TIMEOUT_S = 30.0


def expand(name: str, value: str, env: Mapping[str, str]) -> str:
    """`value` with every `${VAR}` replaced from `env`; AgentError naming the server when one is unset."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise AgentError(f"MCP server {name!r}: ${{{match.group(1)}}} is not set in the environment")
        return env[match.group(1)]

    return _VAR.sub(one, value)


def start_options(
    name: str, server: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of `ToolRegistry.mount_mcp` / `MCPConnection` for one settings entry,
    its `${VAR}`s expanded from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    if server.get("transport", "stdio") == "http":
        if not server.get("url"):
            raise AgentError(f"MCP server {name!r}: an http server needs a url")
        headers = {k: expand(name, v, env) for k, v in server.get("headers", {}).items()}
        return {"url": expand(name, server["url"], env), "headers": headers}
    if not server.get("command"):
        raise AgentError(f"MCP server {name!r}: a stdio server needs a command")
    extra = {k: expand(name, v, env) for k, v in server.get("env", {}).items()}
    return {
        "command": expand(name, server["command"], env),
        "args": [expand(name, a, env) for a in server.get("args", [])],
        # Merged by the SDK over its few safe variables (PATH, HOME, ...): the rest of this process's
        # environment, secrets included, reaches a server only through its entry's `env`.
        "env": extra or None,
    }


def mount_servers(
    registry: Any, servers: Mapping[str, Mapping[str, Any]], *, start_timeout_s: float = START_TIMEOUT_S
) -> list[str]:
    """Mount every server of `servers` into `registry`; a failure is one line in
    `registry.plugin_errors` (returned too) and that server is left out."""
    problems: list[str] = []
    for name, server in servers.items():
        try:
            options = start_options(name, server)
            cwd = str(registry.workspace.root) if "command" in options else None
            registry.mount_mcp(name, **options, cwd=cwd, start_timeout_s=start_timeout_s)
        except Exception as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"{line} (the session goes on without it)")
    registry.plugin_errors.extend(problems)
    return problems


def describe(server: Mapping[str, Any]) -> str:
    """One line: the URL of an http server, the command line of a stdio one (as written)."""
    if server.get("transport", "stdio") == "http":
        return f"{server.get('url')} (http)"
    return " ".join([server.get("command") or "", *server.get("args", [])]) + " (stdio)"


# ---- writing entries ------------------------------------------------------------------------------
def write_server(path: Path, name: str, server: dict[str, Any] | None) -> bool:
    """Set (or with None, remove) `mcp_servers.<name>` in the settings file at `path`, keeping the
    rest. A new entry is appended as a `[mcp_servers.NAME]` table, so the file keeps its text and
    comments; replacing or removing one writes the file anew, one `key = value` line per key (its
    comments are not kept). False when there was nothing to remove."""
    data = read_file(path)
    servers = dict(data.get("mcp_servers", {}))
    if server is None and name not in servers:
        return False
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if server is not None and name not in servers:
        lines = [f"[mcp_servers.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in server.items()]
        appended = text + ("\n" if text and not text.endswith("\n") else "") + "\n" + "\n".join(lines) + "\n"
        try:  # e.g. a file whose mcp_servers is an inline table cannot take a new table header
            if tomllib.loads(appended).get("mcp_servers", {}).get(name) == server:
                replace_file(path, appended)
                return True
        except tomllib.TOMLDecodeError:
            pass
    if server is None:
        del servers[name]
    else:
        servers[name] = server
    data["mcp_servers"] = servers
    if not servers:
        del data["mcp_servers"]
    replace_file(path, "".join(f"{key} = {toml_value(value)}\n" for key, value in data.items()))
    return True
