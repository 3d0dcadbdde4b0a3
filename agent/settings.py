"""Settings files: what a user configures once instead of passing flags every time.

Three TOML files are read and merged in this order, the later winning, and the command line's flags
win over all of them:

- user: `<user config dir>/settings.toml` (platformdirs' user_config_dir("hybrid-agent"), or
  `$HYBRID_AGENT_CONFIG_DIR` when set);
- project: `<workspace>/.hybrid-agent/settings.toml` (meant to be committed);
- local: `<workspace>/.hybrid-agent/settings.local.toml` (meant to be git-ignored).

Merging: a scalar from a later file replaces the earlier one; lists (permission rules,
`sandbox_allow_read`, the hooks of one event) are concatenated; tables (`mcp_servers`, `hooks`) are
merged by key. Every value remembers the file it came from (`Settings.sources`), for `config show`.

Trust: a project or local file comes with code the user cloned. Its hooks, MCP servers, `allow` rules
and sandbox relaxations apply only in a folder the user trusted (`hybrid-agent trust DIR`, recorded in
the user config dir); until then they are dropped with one warning line each file. `deny` and `ask`
rules always apply: they only take rights away. An MCP server the user added with `hybrid-agent mcp
add` is approved on its own (`approve_server`): it applies in an untrusted folder as long as its
entry is unchanged.

Every problem in a file (TOML syntax, an unknown key, a bad value) is one line naming the file, the
key and what is allowed (`SettingsError`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybrid_agent.agent.errors import AgentError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_DIR_ENV = "HYBRID_AGENT_CONFIG_DIR"
LAYERS = ("user", "project", "local")
RULE = re.compile(r"^(?P<tool>[A-Za-z0-9_.*-]+)(?:\((?P<pattern>.+)\))?$")
HOOK_EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop")
# The keys whose values are lists that later files extend; every other non-table key is a scalar.
LIST_KEYS = ("permissions.allow", "permissions.ask", "permissions.deny", "sandbox_allow_read")
TABLE_KEYS = ("mcp_servers", "hooks")


class SettingsError(AgentError):
    """A settings file that cannot be used: one line naming the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Permissions(_Strict):
    allow: list[str] = Field(default_factory=list)
    ask: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)

    @field_validator("allow", "ask", "deny")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            if not RULE.match(rule.strip()):
                raise ValueError(
                    f"{rule!r} is not a rule: write TOOL or TOOL(PATTERN), e.g. read_file(.env), "
                    "run_command(git status:*), mcp__SERVER__TOOL"
                )
        return [rule.strip() for rule in rules]


class MCPServer(_Strict):
    """One MCP server: stdio (`command` and `args`) or streamable HTTP (`url` and `headers`)."""

    transport: Literal["stdio", "http"] = "stdio"
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class Hook(_Strict):
    matcher: str | None = None  # a regex over tool names; absent = every tool
    command: str
    timeout: float = Field(60.0, gt=0)

    @field_validator("matcher")
    @classmethod
    def _regex(cls, matcher: str | None) -> str | None:
        if matcher is not None:
            try:
                re.compile(matcher)
            except re.error as exc:
                raise ValueError(f"{matcher!r} is not a regular expression ({exc})") from None
        return matcher


HookEvent = Literal["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"]


class SettingsFile(_Strict):
    """What one settings file may hold (every key optional)."""

    model: str | None = None
    db: str | None = None
    device: str | None = None
    window: int | None = Field(None, ge=1)
    sinks: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    max_new_tokens: int | None = Field(None, ge=1)
    permission_mode: Literal["ask", "accept-edits", "auto", "plan"] | None = None
    enable_commands: bool | None = None
    permissions: Permissions | None = None
    mcp_servers: dict[str, MCPServer] | None = None
    hooks: dict[HookEvent, list[Hook]] | None = None
    sandbox: Literal["workspace-write", "read-only", "off"] | None = None
    sandbox_network: bool | None = None
    sandbox_allow_read: list[str] | None = None
    mention_max_bytes: int | None = Field(None, ge=0)  # of one @path file in a message; 0: off
    project_memory_max_bytes: int | None = Field(None, ge=0)  # AGENTS.md text in the system prompt; 0: off


SCALAR_KEYS = tuple(
    k for k in SettingsFile.model_fields if k not in ("permissions", *TABLE_KEYS, "sandbox_allow_read")
)


# ---- where the files are ---------------------------------------------------------------------------
def user_config_dir() -> Path:
    """`$HYBRID_AGENT_CONFIG_DIR`, else platformdirs' user config dir (it honours XDG_CONFIG_HOME)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("hybrid-agent", appauthor=False))


def settings_paths(workspace: str | Path) -> dict[str, Path]:
    """The three files, by layer name (they need not exist)."""
    folder = Path(workspace).expanduser().resolve() / ".hybrid-agent"
    return {
        "user": user_config_dir() / "settings.toml",
        "project": folder / "settings.toml",
        "local": folder / "settings.local.toml",
    }


# ---- trust -----------------------------------------------------------------------------------------
def _trust_file() -> Path:
    return user_config_dir() / "trusted_folders.json"


def trusted_folders() -> list[str]:
    try:
        data = json.loads(_trust_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{_trust_file()}: cannot read the trusted folders ({exc})") from None
    return [str(p) for p in data.get("folders", [])] if isinstance(data, dict) else []


def is_trusted(workspace: str | Path) -> bool:
    """Whether `workspace` is a trusted folder or inside one."""
    here = Path(workspace).expanduser().resolve()
    return any(here == Path(t) or here.is_relative_to(t) for t in trusted_folders())


def trust(folder: str | Path) -> tuple[Path, bool]:
    """Record `folder` as trusted; (its resolved path, whether it was new)."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise SettingsError(f"{path} is not a folder")
    known = trusted_folders()
    if str(path) in known:
        return path, False
    replace_file(_trust_file(), json.dumps({"folders": [*known, str(path)]}, indent=2) + "\n")
    return path, True


def _approved_file() -> Path:
    return user_config_dir() / "approved_mcp_servers.json"


def _server_key(workspace: str | Path, name: str, server: dict[str, Any]) -> str:
    """The folder, the name and the whole entry as written (before `${VAR}` expansion): an entry
    that a later commit changes is no longer approved."""
    folder = str(Path(workspace).expanduser().resolve())
    return json.dumps([folder, name, server], sort_keys=True, ensure_ascii=False)


def approved_servers() -> list[str]:
    try:
        data = json.loads(_approved_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{_approved_file()}: cannot read the approved MCP servers ({exc})") from None
    return [str(k) for k in data.get("servers", [])] if isinstance(data, dict) else []


def approve_server(workspace: str | Path, name: str, server: dict[str, Any] | None) -> None:
    """Record (or, with `server` None, forget every record of) the MCP server `name` of `workspace`
    as approved by the user: `mcp add` does this, so a server the user added applies without
    `trust`, while one that came in a cloned settings file does not."""
    folder = _server_key(workspace, name, {})[: -len(", {}]")]
    keys = [k for k in approved_servers() if not k.startswith(folder + ",")]
    if server is not None:
        keys.append(_server_key(workspace, name, server))
    replace_file(_approved_file(), json.dumps({"servers": keys}, indent=2) + "\n")


# ---- reading one file ------------------------------------------------------------------------------
def _key_of(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark for a bad key of a table (an unknown hook event)
            continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _allowed(loc: tuple[Any, ...]) -> str:
    """The keys allowed where `loc` (an unknown key) sits."""
    parent = loc[0] if len(loc) > 1 else None
    model = {"permissions": Permissions, "mcp_servers": MCPServer, "hooks": Hook}.get(parent, SettingsFile)
    return ", ".join(model.model_fields)


def read_file(path: Path) -> dict[str, Any]:
    """A settings file as a plain dict of the keys it sets (validated); {} when it does not exist."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: TOML syntax error: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        SettingsFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            what = f"unknown key; allowed here: {_allowed(loc)}"
        elif loc[0] == "hooks" and loc[-1] == "[key]":
            what = f"unknown hook event; allowed: {', '.join(HOOK_EVENTS)}"
        else:
            what = error["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise SettingsError(f"{path}: key `{_key_of(loc)}`: {what}{more}") from None
    return raw


# ---- merging ---------------------------------------------------------------------------------------
@dataclass
class Settings:
    """The merged settings. `values` holds what is set, as plain TOML-shaped data; `sources` names the
    layer of each scalar and table entry (dotted key); `list_sources` the layer of each list item."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    list_sources: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # (file, what it would enable) for each project or local file cut down for want of trust.
    untrusted: list[tuple[Path, list[str]]] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def rules(self, kind: str) -> list[tuple[str, str]]:
        """(rule, layer) of `permissions.<kind>`, in file order."""
        rules = self.values.get("permissions", {}).get(kind, [])
        return list(zip(rules, self.list_sources.get(f"permissions.{kind}", []), strict=True))

    def add(self, layer: str, data: dict[str, Any]) -> None:
        """Merge one layer's data on top of what is here."""
        for key, value in data.items():
            if key == "permissions":
                for kind, rules in value.items():
                    self._extend(f"permissions.{kind}", rules, layer)
            elif key == "sandbox_allow_read":
                self._extend(key, value, layer)
            elif key == "mcp_servers":
                servers = self.values.setdefault(key, {})
                for name, server in value.items():
                    servers[name] = server
                    self.sources[f"{key}.{name}"] = layer
            elif key == "hooks":
                hooks = self.values.setdefault(key, {})
                for event, entries in value.items():
                    hooks.setdefault(event, []).extend(entries)
                    self.list_sources.setdefault(f"hooks.{event}", []).extend([layer] * len(entries))
            else:
                self.values[key] = value
                self.sources[key] = layer

    def _extend(self, key: str, items: list[Any], layer: str) -> None:
        head, _, tail = key.partition(".")
        where = self.values.setdefault(head, {}) if tail else self.values
        where.setdefault(tail or head, []).extend(items)
        self.list_sources.setdefault(key, []).extend([layer] * len(items))


def _untrusted(data: dict[str, Any], workspace: str | Path) -> tuple[dict[str, Any], list[str]]:
    """`data` without what an untrusted file may not set (MCP servers the user approved are kept);
    the names of what was dropped."""
    kept = dict(data)
    dropped = [k for k in ("hooks",) if kept.pop(k, None)]
    servers = kept.pop("mcp_servers", None) or {}
    approved = set(approved_servers()) if servers else set()
    ok = {n: v for n, v in servers.items() if _server_key(workspace, n, v) in approved}
    if ok:
        kept["mcp_servers"] = ok
    if len(ok) < len(servers):
        dropped.append("mcp_servers" + (f" {', '.join(n for n in servers if n not in ok)}" if ok else ""))
    if kept.get("permissions", {}).get("allow"):
        kept["permissions"] = {k: v for k, v in kept["permissions"].items() if k != "allow"}
        dropped.append("permissions.allow")
    if kept.get("sandbox") == "off":
        dropped.append(f"sandbox = {kept.pop('sandbox')!r}")
    if kept.get("sandbox_network"):
        dropped.append(f"sandbox_network = {kept.pop('sandbox_network')}")
    if kept.pop("sandbox_allow_read", None):
        dropped.append("sandbox_allow_read")
    return kept, dropped


def _needs_trust(data: dict[str, Any], kept: dict[str, Any]) -> list[str]:
    """What `data` (one file's keys) would enable that `kept` (the same, cut down by `_untrusted`)
    does not: one line each, for the question whether to trust the folder."""
    items = [
        f"run the {event} hook `{hook['command']}`"
        for event, hooks in (data.get("hooks") or {}).items()
        for hook in hooks
    ]
    for name, server in (data.get("mcp_servers") or {}).items():
        if name not in kept.get("mcp_servers", {}):
            what = server.get("url") or " ".join([server.get("command") or "", *server.get("args", [])])
            items.append(f"start the MCP server {name}: `{what.strip()}`")
    items += [f"allow without asking: {rule}" for rule in (data.get("permissions") or {}).get("allow", [])]
    if data.get("sandbox") == "off":
        items.append('run commands without the sandbox (sandbox = "off")')
    if data.get("sandbox_network"):
        items.append("give commands the network (sandbox_network = true)")
    items += [f"let commands read {path}" for path in data.get("sandbox_allow_read") or []]
    return items


def load_settings(workspace: str | Path = ".", cli: dict[str, Any] | None = None) -> Settings:
    """The user, project and local files of `workspace` merged, then `cli` (flags the user gave, by
    settings key; None values are left out). Raises SettingsError for a file that cannot be used."""
    settings = Settings(files=settings_paths(workspace))
    trusted: bool | None = None
    for layer in LAYERS:
        path = settings.files[layer]
        data = read_file(path)
        if data and layer != "user":
            trusted = is_trusted(workspace) if trusted is None else trusted
            if not trusted:
                whole, (data, dropped) = data, _untrusted(data, workspace)
                if dropped:
                    settings.untrusted.append((path, _needs_trust(whole, data)))
                    settings.warnings.append(
                        f"{path}: ignored {', '.join(dropped)}: the folder is not trusted "
                        f"(run `hybrid-agent trust {Path(workspace).expanduser().resolve()}` to apply them)"
                    )
        settings.add(layer, data)
    settings.add("cli", {k: v for k, v in (cli or {}).items() if v is not None})
    return settings


def flat(settings: Settings) -> list[tuple[str, Any, str]]:
    """(dotted key, value, layer) for every value set, in a stable order: what `config show` prints."""
    rows: list[tuple[str, Any, str]] = []
    for key in SCALAR_KEYS:
        if key in settings.values:
            rows.append((key, settings.values[key], settings.sources[key]))
    for key in ("permissions.allow", "permissions.ask", "permissions.deny", "sandbox_allow_read"):
        head, _, tail = key.partition(".")
        items = settings.values.get(head, {}).get(tail, []) if tail else settings.values.get(head, [])
        rows += [(key, v, s) for v, s in zip(items, settings.list_sources.get(key, []), strict=True)]
    for name, server in settings.values.get("mcp_servers", {}).items():
        rows.append((f"mcp_servers.{name}", server, settings.sources[f"mcp_servers.{name}"]))
    for event, hooks in settings.values.get("hooks", {}).items():
        sources = settings.list_sources.get(f"hooks.{event}", [])
        rows += [(f"hooks.{event}", h, s) for h, s in zip(hooks, sources, strict=True)]
    return rows


# ---- writing -----------------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    """`value` as one line of TOML (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)


def add_rule(path: Path, kind: str, rule: str) -> bool:
    """Add `rule` to `permissions.<kind>` of the settings file at `path` (made if missing); False when
    it is there already. A file without `permissions` keeps its text (the table is appended); one with
    it is written anew, one `key = value` line per key (its comments are not kept)."""
    data = read_file(path)
    permissions = data.get("permissions", {})
    if rule in permissions.get(kind, []):
        return False
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if "permissions" not in data:
        text += (
            "\n" if text and not text.endswith("\n") else ""
        ) + f"\n[permissions]\n{kind} = {toml_value([rule])}\n"
    else:
        data["permissions"] = {**permissions, kind: [*permissions.get(kind, []), rule]}
        text = "".join(f"{key} = {toml_value(value)}\n" for key, value in data.items())
    replace_file(path, text)
    return True


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
