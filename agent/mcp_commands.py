"""`hybrid-agent mcp add|list|get|remove`: MCP servers in the settings files (agent/mcp_servers.py).

`mcp add` writes the entry (default scope: local, `<workspace>/.hybrid-agent/settings.local.toml`)
and, for the project and local scopes, records it as approved by the user in the user config dir
(agent/settings.py's `approve_server`): the user's own `mcp add` in a folder counts as trusting that
server, so it is used without `hybrid-agent trust`. Values are stored as written; `${VAR}` is
expanded only when the server starts.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from hybrid_agent.agent.config_commands import settle
from hybrid_agent.agent.errors import AgentError, printable
from hybrid_agent.agent.mcp_servers import describe, start_options, write_server
from hybrid_agent.agent.settings import MCPServer, approve_server, read_file, settings_paths


def _pairs(items: list[str] | None, sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, found, value = item.partition(sep)
        if not found or not key.strip():
            raise AgentError(f"{what} {item!r}: write KEY{sep}VALUE")
        out[key.strip()] = value.strip() if sep == ":" else value
    return out


def _entry(args: argparse.Namespace) -> dict[str, Any]:
    _split(args)
    if args.transport == "http":
        if len(args.target) != 1:
            raise AgentError("mcp add --transport http NAME URL: give exactly one URL")
        entry: dict[str, Any] = {"transport": "http", "url": args.target[0]}
        if args.header:
            entry["headers"] = _pairs(args.header, ":", "--header")
        return entry
    if not args.target:
        raise AgentError("mcp add NAME -- COMMAND [ARGS...]: give the command that starts the server")
    entry = {"command": args.target[0]}
    if args.target[1:]:
        entry["args"] = list(args.target[1:])
    if args.env:
        entry["env"] = _pairs(args.env, "=", "--env")
    return entry


def _add(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", args.name):
        raise AgentError(f"MCP server name {args.name!r}: use 1-32 letters, digits, '_' or '-'")
    entry = _entry(args)
    MCPServer.model_validate(entry)
    path = settings_paths(args.workspace)[args.scope]
    write_server(path, args.name, None)  # an entry of the same name in this file is replaced
    write_server(path, args.name, entry)
    if args.scope != "user":
        approve_server(args.workspace, args.name, entry)
    print(printable(f"added MCP server {args.name} to {path}: {describe(entry)}"))
    return 0


def _remove(args: argparse.Namespace) -> int:
    paths = settings_paths(args.workspace)
    scopes = [args.scope] if args.scope else ["local", "project", "user"]
    for scope in scopes:
        if write_server(paths[scope], args.name, None):
            if scope != "user":
                approve_server(args.workspace, args.name, None)
            print(printable(f"removed MCP server {args.name} from {paths[scope]}"))
            return 0
    where = ", ".join(str(paths[s]) for s in scopes)
    raise AgentError(f"no MCP server {args.name!r} in {where}")


def _servers(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    settings = settle(args)
    return settings.get("mcp_servers", {}), settings.sources


def _check(name: str, server: dict[str, Any], workspace: str, timeout_s: float) -> tuple[int | None, str]:
    """(tool count, "connected") or (None, the error's first line)."""
    from hybrid_agent.tools.mcp_client import MCPConnection

    try:
        options = start_options(name, server)
        if "command" in options:
            options["cwd"] = workspace
        conn = MCPConnection(name, **options, start_timeout_s=timeout_s)
    except Exception as exc:
        return None, (str(exc).splitlines() or [type(exc).__name__])[0]
    try:
        return len(conn.definitions), "connected"
    finally:
        conn.close()


def _list(args: argparse.Namespace) -> int:
    servers, sources = _servers(args)
    if not servers:
        print("no MCP servers (add one with `hybrid-agent mcp add NAME -- COMMAND ARGS...`)")
        return 0
    for name, server in servers.items():
        count, status = _check(name, server, args.workspace, args.timeout)
        scope = sources.get(f"mcp_servers.{name}", "?")
        if count is None:
            line = f"{name}: {describe(server)} [{scope}] - failed: {status}"
        else:
            line = f"{name}: {describe(server)} [{scope}] - connected, {count} tool(s)"
        print(printable(line))
    return 0


def _get(args: argparse.Namespace) -> int:
    servers, sources = _servers(args)
    if args.name not in servers:
        paths = settings_paths(args.workspace)
        unused = [s for s, p in paths.items() if args.name in read_file(p).get("mcp_servers", {})]
        hint = f" ({', '.join(unused)} file has it, but the folder is not trusted)" if unused else ""
        raise AgentError(f"no MCP server {args.name!r}{hint}")
    server = servers[args.name]
    print(printable(f"{args.name}:"))
    print(printable(f"  scope: {sources.get(f'mcp_servers.{args.name}', '?')}"))
    print(f"  transport: {server.get('transport', 'stdio')}")
    for key in ("command", "args", "env", "url", "headers"):
        if server.get(key):
            print(printable(f"  {key}: {json.dumps(server[key], ensure_ascii=False)}"))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    actions = {"add": _add, "remove": _remove, "list": _list, "get": _get}
    return actions[args.action or "list"](args)


def _add_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    scopes = ("user", "project", "local")
    p.add_argument("--scope", choices=scopes, default="local", help="which settings file (default: local)")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    p.add_argument("--env", action="append", metavar="K=V", help="an environment variable (stdio)")
    p.add_argument("--header", action="append", metavar="K:V", help="an HTTP header (http)")
    return p


def _split(args: argparse.Namespace) -> None:
    """Options given after NAME are parsed into `args`; `args.target` becomes the command (after
    `--`) or the URL."""
    target = list(args.target)
    cut = target.index("--") if "--" in target else len(target)
    before, after = target[:cut], target[cut + 1 :]
    parser: argparse.ArgumentParser = args.options_parser
    parser.add_argument("rest", nargs="*")
    args.rest = []
    parser.parse_args(before, namespace=args)
    args.target = [*args.rest, *after]


def add_parser(sub: Any, shared: argparse.ArgumentParser) -> None:
    """The `mcp` command and its actions, on the subparsers `sub` of agent/cli.py's parser."""
    mcp = sub.add_parser("mcp", parents=[shared], help="add, list, show or remove MCP servers")
    msub = mcp.add_subparsers(dest="action", metavar="{add,list,get,remove}")
    scopes = ("user", "project", "local")
    add = msub.add_parser(
        "add",
        parents=[shared],
        help="add a server: NAME -- COMMAND ARGS... (stdio) or --transport http NAME URL",
    )
    _add_options(add)
    add.add_argument("name")
    # REMAINDER: options may also follow NAME (argparse would otherwise stop the positionals there);
    # `_split` parses them and takes what follows `--` as the command, untouched.
    add.add_argument("target", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS... | URL")
    add.set_defaults(options_parser=_add_options(argparse.ArgumentParser(add_help=False, parents=[shared])))
    ls = msub.add_parser("list", parents=[shared], help="each server: connected or its error, and tools")
    ls.add_argument("--timeout", type=float, default=10.0, metavar="S", help="start timeout per server")
    get = msub.add_parser("get", parents=[shared], help="one server's entry")
    get.add_argument("name")
    rm = msub.add_parser("remove", parents=[shared], help="remove a server from a settings file")
    rm.add_argument("name")
    rm.add_argument("--scope", choices=scopes, default=None, help="default: the first file that has it")
    mcp.set_defaults(timeout=10.0)
