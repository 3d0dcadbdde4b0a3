"""Permission rules: `permissions.allow`, `.ask` and `.deny` of the settings files (agent/settings.py).

A rule is `TOOL` (every call of that tool) or `TOOL(PATTERN)`. TOOL is a tool's name as the model
sees it, or `mcp__SERVER__TOOL` for a tool of an MCP server (`*` matches any run of characters, so
`mcp__github__*` names a whole server). PATTERN depends on the call's arguments:

- a call with a `path` argument (read_file, write_file, edit_file, list_dir, glob, grep): a path glob
  relative to the workspace (`src/**`, `.env`, `**/*.key`); `*` stays within one folder, `**` spans
  folders; a pattern starting with `/` is matched against the absolute path;
- a call with a `command` argument (run_command): the command line itself, or a prefix `PREFIX:*`
  (`git status:*` matches `git status` and `git status --short`). A command that chains others (`;`,
  `&&`, `||`, `|`, a newline, backquotes, `$(`) or redirects (`>`, `<`) is never matched by an `allow`
  rule (so `git status:*` does not allow `git status; rm -rf ~`), while a `deny` or `ask` rule matches
  it when any of its parts does;
- any other call: a pattern never matches it (write the bare TOOL to cover such a tool).

Deny beats ask beats allow; no matching rule leaves the decision to the approval mode.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.settings import RULE, Settings, add_rule

Action = Literal["deny", "ask", "allow"]
_CHAIN = re.compile(r"&&|\|\||[;|&\n`<>]|\$\(")


@dataclass(frozen=True)
class Rule:
    text: str
    tool: str
    pattern: str | None
    origin: str = ""  # the settings layer it came from (user, project, local, cli)

    @classmethod
    def parse(cls, text: str, origin: str = "") -> Rule:
        m = RULE.match(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not a rule: write TOOL or TOOL(PATTERN)")
        return cls(text.strip(), m["tool"], m["pattern"], origin)


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: Rule

    def describe(self) -> str:
        where = f" in the {self.rule.origin} settings" if self.rule.origin else ""
        return f"the {self.action} rule `{self.rule.text}`{where}"


def rule_name(tool: str, source: str = "builtin") -> str:
    """The name rules use for a tool: `mcp__SERVER__TOOL` for an MCP tool (registered as
    `SERVER__TOOL`, source `mcp:SERVER`), else the tool's own name."""
    return f"mcp__{tool}" if source.startswith("mcp:") else tool


def _glob(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _path_matches(pattern: str, path: str, workspace: Path) -> bool:
    full = (workspace / Path(path).expanduser()).resolve()
    if pattern.startswith("/"):
        return _glob(pattern).match(full.as_posix()) is not None
    try:
        rel = full.relative_to(workspace).as_posix()
    except ValueError:  # outside the workspace (the tools refuse it anyway): only absolute patterns
        return False
    return _glob(pattern.removeprefix("./")).match(rel) is not None


def _command_matches(pattern: str, command: str, action: Action) -> bool:
    parts = [" ".join(p.split()) for p in _CHAIN.split(command)] if action != "allow" else []
    if action == "allow":
        if _CHAIN.search(command):
            return False
        parts = [" ".join(command.split())]
    if pattern.endswith(":*"):
        prefix = " ".join(pattern[:-2].split())
        return any(p == prefix or p.startswith(prefix + " ") for p in parts if p)
    return any(p == " ".join(pattern.split()) for p in parts if p)


class PermissionRules:
    """The rules of one session, checked before every tool call (agent/loop.py)."""

    def __init__(
        self,
        workspace: str | Path,
        rules: dict[Action, list[Rule]] | None = None,
        remember_in: Path | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.remember_in = remember_in  # the settings file that "allow always" adds a rule to
        self.rules: dict[Action, list[Rule]] = {"deny": [], "ask": [], "allow": []}
        for action, listed in (rules or {}).items():
            self.rules[action].extend(listed)

    @classmethod
    def from_settings(cls, settings: Settings, workspace: str | Path) -> PermissionRules:
        rules: dict[Action, list[Rule]] = {
            a: [Rule.parse(t, origin) for t, origin in settings.rules(a)] for a in ("deny", "ask", "allow")
        }
        return cls(workspace, rules, remember_in=settings.files.get("local"))

    def remember(self, tool: str, source: str = "builtin") -> None:
        """The user allowed every call of `tool` ("allow always"): add the rule `TOOL` to the local
        settings file, for the next sessions too (in a folder that is not trusted, `allow` rules of
        that file apply once it is). If the file cannot be written, the answer holds for this session
        only (agent/loop.py remembers it)."""
        rule = Rule(rule_name(tool, source), rule_name(tool, source), None, "local")
        self.rules["allow"].append(rule)
        if self.remember_in is not None:
            with contextlib.suppress(OSError, AgentError):
                add_rule(self.remember_in, "allow", rule.text)

    def remembering(self, approval: Any) -> Any:
        """`approval` (agent/loop.py's callback) that also remembers an "allow always" answer."""

        async def ask(request: Any) -> Any:
            decision = await approval(request)
            if decision.allow and decision.always:
                self.remember(request.tool, request.source)
            return decision

        return ask

    def matches(self, rule: Rule, action: Action, name: str, arguments: dict[str, Any]) -> bool:
        if not fnmatch.fnmatchcase(name, rule.tool):
            return False
        if rule.pattern is None:
            return True
        if isinstance(arguments.get("path"), str):
            return _path_matches(rule.pattern, arguments["path"], self.workspace)
        if isinstance(arguments.get("command"), str):
            return _command_matches(rule.pattern, arguments["command"], action)
        return False

    def check(self, tool: str, arguments: dict[str, Any], source: str = "builtin") -> Verdict | None:
        """The first rule that decides this call (deny, then ask, then allow), or None."""
        name = rule_name(tool, source)
        for action in ("deny", "ask", "allow"):
            for rule in self.rules[action]:  # type: ignore[index]
                if self.matches(rule, action, name, arguments):  # type: ignore[arg-type]
                    return Verdict(action, rule)  # type: ignore[arg-type]
        return None


def refusal(name: str, decision: Any, verdict: Verdict | None) -> str:
    """What the model reads for a call that was not run: refused by a deny rule, or by the user (an
    `ApprovalDecision`, whose reason and "always" are passed on)."""
    if verdict is not None and verdict.action == "deny":
        return f"this {name} call is {decision.reason}; it was not run"
    why = f" ({decision.reason})" if decision.reason else ""
    text = f"the user did not approve this {name} call{why}; it was not run"
    if decision.always:
        text += f". The user refuses every {name} call for the rest of this session"
    return text
