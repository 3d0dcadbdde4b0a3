"""ToolRegistry: the tools of one workspace, and the one way to run them.

`registry.call(name, arguments, approve=...)` is exactly what the agent does with a model's tool call:
look the tool up, check its policy, validate the arguments against its pydantic model, run it inside
the workspace with the journal, and turn every failure into an `is_error` result. It never raises for
something the model did.

Tools come from three places, all through `add_from_object`: the built-ins (the `builtin` entry point
of this distribution), tools registered in code (`register`), and third-party distributions that
publish entry points in the group `hybrid_agent.tools`. A plugin that fails to import or yields
something that is not a tool is recorded in `plugin_errors` and skipped.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from hybrid_agent.tools.base import (
    POLICIES,
    FunctionTool,
    Limits,
    Policy,
    Preview,
    Tool,
    ToolContext,
    ToolResult,
    validation_message,
)
from hybrid_agent.tools.builtins import BUILTIN_TOOLS
from hybrid_agent.tools.errors import ArgumentsError, MCPServerError, ToolDefinitionError, ToolError
from hybrid_agent.tools.journal import Journal, MemoryJournal, undo_after_turn, undo_last
from hybrid_agent.tools.sandbox import SandboxPolicy, sandbox_problem
from hybrid_agent.tools.workspace import Workspace
from pydantic import ValidationError

ENTRY_POINT_GROUP = "hybrid_agent.tools"
_OWN_DISTRIBUTION = "hybrid-agent"


def as_tools(obj: Any) -> list[Tool]:
    """Tools from what an entry point (or `register`) gives: a Tool instance, a Tool subclass, a plain
    typed function (wrapped with @tool), or a list/tuple of those."""
    if isinstance(obj, Tool):
        return [obj]
    if inspect.isclass(obj) and issubclass(obj, Tool):
        return [obj()]
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in as_tools(item)]
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return [FunctionTool(obj)]
    raise ToolDefinitionError(
        f"{obj!r} is not a tool: give a Tool, a Tool subclass, a typed function, or a list"
    )


class ToolRegistry:
    def __init__(
        self,
        workspace: str | os.PathLike[str] | Workspace,
        *,
        journal: Journal | None = None,
        enable_commands: bool = False,
        policies: dict[str, Policy] | None = None,
        load_plugins: bool = True,
        limits: Limits | None = None,
        sandbox: SandboxPolicy | None = None,
    ) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.enable_commands = enable_commands
        self.limits = limits or Limits()
        self.sandbox = sandbox or SandboxPolicy()  # workspace-write: commands need bwrap, or mode off
        if enable_commands:
            sandbox_problem(self.sandbox)  # said once, when commands are enabled, not at the first call
        self.plugin_errors: list[str] = []
        self._tools: dict[str, Tool] = {}
        self._policies: dict[str, Policy] = {}
        self._mcp: list[Any] = []  # MCPConnection objects, closed by close()
        self._lock = threading.Lock()
        self.add_from_object(BUILTIN_TOOLS, source="builtin")
        if load_plugins:
            self.load_entry_points()
        for name, policy in (policies or {}).items():
            self.set_policy(name, policy)

    # --- registering -------------------------------------------------------------------------------

    def add_from_object(self, obj: Any, *, source: str, replace: bool = False) -> list[str]:
        """Register every tool `obj` stands for (see `as_tools`); returns their names."""
        names = []
        for t in as_tools(obj):
            if t.name == "run_command" and not self.enable_commands:
                continue  # off unless enabled: the model does not even see it
            if t.name in self._tools and not replace:
                raise ToolDefinitionError(
                    f"a tool named {t.name!r} exists already ({self._tools[t.name].source}); "
                    "rename yours or pass replace=True"
                )
            t.source = source
            self._tools[t.name] = t
            names.append(t.name)
        return names

    def register(self, fn_or_tool: Tool | type[Tool] | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool defined in code (a function is wrapped with @tool). Returns the tool."""
        tools = as_tools(fn_or_tool)
        if len(tools) != 1:
            raise ToolDefinitionError("register takes one tool; use add_from_object for several")
        source = tools[0].source if tools[0].source != "builtin" else "code"
        self.add_from_object(tools[0], source=source, replace=replace)
        return tools[0]

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)
        self._policies.pop(name, None)

    def load_entry_points(self) -> None:
        """Load third-party tools from the `hybrid_agent.tools` entry-point group; never raises."""
        try:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as e:  # broken metadata of some installed distribution
            self.plugin_errors.append(f"cannot read entry points: {type(e).__name__}: {e}")
            return
        for ep in sorted(eps, key=lambda e: (e.dist.name if e.dist else "", e.name)):
            dist = ep.dist.name if ep.dist else "?"
            if dist.lower().replace("_", "-") == _OWN_DISTRIBUTION:
                continue  # the built-ins, loaded above from the same object
            try:
                self.add_from_object(ep.load(), source=f"plugin:{dist}")
            except Exception as e:  # a plugin's bug must not take the agent down: report and skip it
                self.plugin_errors.append(
                    f"plugin {ep.name!r} ({ep.value}) from {dist} was skipped: {type(e).__name__}: {e}"
                )

    def mount_mcp(
        self,
        server: str,
        command: str | None = None,
        args: Iterable[str] = (),
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float = 60.0,
        start_timeout_s: float = 60.0,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[str]:
        """Start an MCP server (stdio: `command`; streamable HTTP: `url` and `headers`) and add its
        tools as `<server>__<tool>`; they default to `ask`. `timeout_s` bounds each call,
        `start_timeout_s` the start (spawn or connect, initialize, list tools)."""
        from hybrid_agent.tools.mcp_client import MCPConnection  # the SDK is imported only when MCP is used

        conn = MCPConnection(
            server,
            command,
            list(args),
            env=env,
            cwd=cwd,
            timeout_s=timeout_s,
            start_timeout_s=start_timeout_s,
            url=url,
            headers=headers,
        )
        try:
            tools = conn.tools()
            taken = [t.name for t in tools if t.name in self._tools]
            if taken:
                raise MCPServerError(f"MCP server {server!r}: tool names already in use: {', '.join(taken)}")
            names = self.add_from_object(tools, source=f"mcp:{server}")
        except Exception:
            conn.close()  # all or nothing: no half-mounted server left running
            raise
        self._mcp.append(conn)
        return names

    def close(self) -> None:
        """Stop mounted MCP servers."""
        while self._mcp:
            self._mcp.pop().close()

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- looking up -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(self._tools)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def schemas(self) -> list[dict[str, Any]]:
        """Function schemas of the usable tools (policy `deny` left out), for the prompt."""
        return [t.schema() for name, t in self._tools.items() if self.policy(name) != "deny"]

    def read_only(self, name: str) -> bool:
        """Whether the tool `name` only reads (plan mode offers and runs only those)."""
        return bool(self.get(name).read_only)

    def policy(self, name: str) -> Policy:
        return self._policies.get(name) or self.get(name).policy

    def set_policy(self, name: str, policy: Policy) -> None:
        if policy not in POLICIES:
            raise ToolError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.get(name)  # unknown names are an error, not a silent no-op
        self._policies[name] = policy

    # --- running -----------------------------------------------------------------------------------

    def context(
        self, *, turn: int = 0, approved: bool = False, cancel: threading.Event | None = None
    ) -> ToolContext:
        return ToolContext(
            self.workspace,
            self.journal,
            turn=turn,
            approved=approved,
            cancel=cancel or threading.Event(),
            limits=self.limits,
            sandbox=self.sandbox,
        )

    def preview(self, name: str, arguments: dict[str, Any]) -> Preview:
        """What an approval request should show; never raises."""
        try:
            t = self.get(name)
            args = t.parse_arguments(arguments)
            return t.preview(args, self.context())
        except ValidationError as e:
            return Preview(summary=validation_message(name, e))
        except Exception as e:
            return Preview(summary=f"{name}: {e}")

    def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        approve: bool = True,
        turn: int = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> ToolResult:
        """Run a tool as the agent would. `approve` is the user's answer for a tool whose policy is `ask`."""
        t = self._tools.get(name)
        if t is None:
            return ToolResult.error(f"unknown tool {name!r}; available tools: {', '.join(self._tools)}")
        policy = self.policy(name)
        if policy == "deny":
            return ToolResult.error(f"tool {name} is disabled by policy", denied=True)
        if not isinstance(arguments, dict):
            return ToolResult.error(
                f"arguments for {name} must be a JSON object, not {type(arguments).__name__}"
            )
        try:
            args = t.parse_arguments(arguments)
        except ValidationError as e:
            return ToolResult.error(validation_message(name, e))
        except ArgumentsError as e:
            return ToolResult.error(str(e))
        except Exception as e:  # a plugin's own argument parsing failed: still a result, not a crash
            return ToolResult.error(f"tool {name} could not read its arguments: {type(e).__name__}: {e}")
        if policy == "ask" and not approve:
            return ToolResult.error(f"the user did not approve this {name} call; it was not run", denied=True)
        ctx = self.context(turn=turn, approved=policy == "ask", cancel=cancel)
        try:
            result = t.run(args, ctx)
        except ToolError as e:
            return ToolResult.error(str(e))
        except Exception as e:  # a tool's bug becomes a result the model (and the user) can read
            return ToolResult.error(f"tool {name} failed: {type(e).__name__}: {e}")
        if not isinstance(result, ToolResult):
            return ToolResult.error(f"tool {name} returned {type(result).__name__}, not a ToolResult")
        return result

    # --- undo --------------------------------------------------------------------------------------

    def undo_last(self) -> str:
        return undo_last(self.journal, self.workspace)

    def undo_after_turn(self, turn: int) -> str:
        return undo_after_turn(self.journal, self.workspace, turn)
