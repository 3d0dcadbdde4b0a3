"""The tool API: `ToolResult`, `ToolContext`, the `Tool` base class and the `@tool` decorator.

Design choices:
- The schema the model sees is generated from a pydantic model, never written by hand. `@tool` builds
  that model from the function's signature; descriptions come from the docstring (summary, and an
  `Args:` section for the parameters). Unknown arguments are rejected (`extra="forbid"`), so a model
  that invents a parameter name is told so instead of being silently ignored.
- Tool failures are results (`is_error=True`), not exceptions: the registry converts whatever a tool
  raises into a result the model can read and correct.
- A tool declares its default approval policy. Built-ins: read-only tools `auto`, writes and commands
  `ask`. A function or subclass that does not say defaults to `ask`: we cannot know that it only reads.
- A tool also declares whether it only reads (`read_only`, default False): plan mode (agent/plan.py)
  offers and runs only those. A tool that does not say counts as one that writes or runs things.
- Writes a tool makes go through `ctx.write_bytes` / `ctx.delete`, which confine the path and record
  before/after bytes in the journal, so every write can be undone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_type_hints, overload

from hybrid_agent.tools.errors import ToolDefinitionError
from hybrid_agent.tools.journal import Journal, JournaledChange
from hybrid_agent.tools.sandbox import SandboxPolicy
from hybrid_agent.tools.workspace import Workspace
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

Policy = Literal["auto", "ask", "deny"]
POLICIES: tuple[Policy, ...] = ("auto", "ask", "deny")


@dataclass
class ToolResult:
    """What a tool call gives back. `text` is what the model reads; `data` is optional structured output
    for the UI or tests; `denied` marks a call that did not run because approval was refused."""

    text: str
    data: Any = None
    is_error: bool = False
    denied: bool = False

    @classmethod
    def error(cls, text: str, **kw: Any) -> ToolResult:
        return cls(text, is_error=True, **kw)


@dataclass
class Preview:
    """What the approval request shows before a call runs (maps onto agent/events.ToolCallRequested)."""

    summary: str
    diff: str | None = None
    command: str | None = None
    path: str | None = None


@dataclass
class Limits:
    """Size caps. Generous for people, small enough that one tool call cannot flood the model's state."""

    read_max_bytes: int = 8 * 1024 * 1024  # bigger files are read only by line range (streamed)
    output_max_chars: int = 50_000  # text returned to the model by one call
    write_max_bytes: int = 8 * 1024 * 1024
    journal_max_bytes: int = 32 * 1024 * 1024  # a file bigger than this cannot be journaled -> not written
    grep_max_results: int = 200
    grep_max_line_bytes: int = 1024 * 1024  # a longer line (minified code) is searched in its head only
    list_max_entries: int = 2_000
    command_output_max_chars: int = 30_000
    command_snapshot_max_bytes: int = 128 * 1024 * 1024  # before-images kept while a command runs
    call_seconds: float = 20.0  # wall-clock budget of one call; the built-ins check it as they go


@dataclass
class ToolContext:
    """Everything a running tool may use besides its arguments."""

    workspace: Workspace
    journal: Journal
    turn: int = 0
    approved: bool = False  # true when a person approved this call (policy `ask`)
    cancel: threading.Event = field(default_factory=threading.Event)
    limits: Limits = field(default_factory=Limits)
    deadline: float = 0.0  # time.monotonic() value the call must end by; 0: limits.call_seconds from now
    sandbox: SandboxPolicy = field(default_factory=SandboxPolicy)  # how run_command confines commands

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.limits.call_seconds

    def time_left(self) -> float:
        """Seconds left of this call's budget (negative once it has run out)."""
        return self.deadline - time.monotonic()

    def stop_reason(self) -> str | None:
        """Why a long-running tool should stop now (cancelled, or out of time), or None to go on.
        Tools that loop over files or lines call this as they go and say in their result that they
        stopped early, so the budget holds inside the call, not only between calls."""
        if self.cancel.is_set():
            return "the call was cancelled"
        if time.monotonic() >= self.deadline:
            return f"the {self.limits.call_seconds:g} s time budget of one tool call ran out"
        return None

    def write_bytes(self, path: str, data: bytes) -> tuple[str, bytes | None]:
        """Write a file inside the workspace and journal it. Returns (relative path, previous bytes)."""
        with self.workspace.lock:
            change = JournaledChange(self.journal, self.workspace, self.turn, data)
            try:
                rel, before = self.workspace.write_bytes(
                    path,
                    data,
                    journal_max_bytes=self.limits.journal_max_bytes,
                    before_write=change.before_write,
                )
            except BaseException:
                change.failed()
                raise
            change.done()
        return rel, before

    def delete(self, path: str) -> tuple[str, bytes | None]:
        """Delete a file inside the workspace and journal it. Returns (relative path, previous bytes)."""
        with self.workspace.lock:
            change = JournaledChange(self.journal, self.workspace, self.turn, None)
            try:
                rel, before = self.workspace.delete(
                    path, journal_max_bytes=self.limits.journal_max_bytes, before_write=change.before_write
                )
            except BaseException:
                change.failed()
                raise
            change.done()
        return rel, before


class _NoArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tool:
    """Long form of a tool: subclass, set `name`, `description`, `Args` (a pydantic model) and `policy`,
    and implement `run(args, ctx)`. Override `preview` to show more than the arguments for approval."""

    name: str = ""
    description: str = ""
    Args: ClassVar[type[BaseModel]] = _NoArguments
    policy: Policy = "ask"
    read_only: bool = False  # only reads (changes no file, runs nothing): usable in plan mode
    source: str = "builtin"  # "builtin", "plugin:<distribution>", "mcp:<server>"

    def __init__(self) -> None:
        cls = type(self)
        if not self.name:
            # CamelCase class name -> snake_case tool name.
            self.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if not self.description:
            # cls.__doc__, not inspect.getdoc: that would inherit Tool's own docstring.
            self.description = unwrap(inspect.cleandoc(cls.__doc__ or ""))
        _check_tool(self)

    def parameters_schema(self) -> dict[str, Any]:
        return strip_titles(self.Args.model_json_schema())

    def schema(self) -> dict[str, Any]:
        """The function schema for the prompt (the shape Hugging Face chat templates take for `tools`)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters_schema(),
            },
        }

    def parse_arguments(self, arguments: dict[str, Any]) -> Any:
        """Validate raw arguments; raises pydantic's ValidationError (the registry reports it)."""
        return self.Args.model_validate(arguments)

    def preview(self, args: Any, ctx: ToolContext) -> Preview:
        shown = args.model_dump_json() if isinstance(args, BaseModel) else json.dumps(args, default=str)
        return Preview(summary=f"{self.name} {shown}")

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        raise NotImplementedError(f"tool {self.name!r} does not implement run()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} policy={self.policy} source={self.source}>"


def _check_tool(t: Tool) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", t.name):
        raise ToolDefinitionError(
            f"tool name {t.name!r} is not usable: use letters, digits, '_', '.', '-' (at most 64 characters)"
        )
    if not t.description.strip():
        raise ToolDefinitionError(f"tool {t.name!r} has no description: give it a docstring")
    if t.policy not in POLICIES:
        raise ToolDefinitionError(f"tool {t.name!r}: policy must be one of {POLICIES}, not {t.policy!r}")


class FunctionTool(Tool):
    """A tool made from a typed function by `@tool`. Calling it calls the function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        policy: Policy = "ask",
        read_only: bool = False,
    ) -> None:
        self.fn = fn
        self.read_only = read_only
        self.name = name or fn.__name__
        summary, param_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or summary
        self.policy = policy
        self._ctx_param: str | None = None
        self.Args = self._build_model(param_docs)  # type: ignore[misc]  # per instance on purpose
        self.__doc__ = fn.__doc__
        _check_tool(self)

    def _build_model(self, param_docs: dict[str, str]) -> type[BaseModel]:
        try:
            hints = get_type_hints(self.fn, include_extras=True)
        except Exception as e:  # an unresolvable forward reference, typically
            raise ToolDefinitionError(f"cannot read the type hints of {self.fn.__qualname__}: {e}") from e
        fields: dict[str, Any] = {}
        for p in inspect.signature(self.fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ToolDefinitionError(
                    f"{self.fn.__qualname__}: *args/**kwargs cannot become tool parameters"
                )
            hint = hints.get(p.name, inspect.Parameter.empty)
            if hint is ToolContext:
                self._ctx_param = p.name
                continue
            if hint is inspect.Parameter.empty:
                raise ToolDefinitionError(
                    f"parameter {p.name!r} of {self.fn.__qualname__} needs a type hint: "
                    "the model's schema is built from it"
                )
            default = ... if p.default is inspect.Parameter.empty else p.default
            if isinstance(default, FieldInfo):
                info = default
                if info.description is None and p.name in param_docs:
                    info.description = param_docs[p.name]
            else:
                # description only when documented: an explicit None would erase one given in
                # Annotated[..., Field(description=...)] when pydantic merges the two.
                doc = {"description": param_docs[p.name]} if p.name in param_docs else {}
                info = Field(default, **doc)
            fields[p.name] = (hint, info)
        model_name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", self.name)) + "Arguments"
        return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)

    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        # Attribute access keeps nested models as models (model_dump would turn them into dicts).
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if self._ctx_param is not None:
            kwargs[self._ctx_param] = ctx
        out = self.fn(**kwargs)
        if inspect.iscoroutine(out):
            out = run_coroutine_blocking(out)
        return to_result(out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    policy: Policy = "ask",
    read_only: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    policy: Policy = "ask",
    read_only: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a typed function into a tool: `@tool` or `@tool(name=..., policy="auto", read_only=True)`
    (`read_only`: it changes nothing and runs nothing, so plan mode may offer it).

    A parameter annotated `ToolContext` receives the context and is not part of the schema. The function
    may return a `ToolResult`, a string (the text), or anything JSON-serialisable (text + data)."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, policy=policy, read_only=read_only)

    return wrap(fn) if fn is not None else wrap


def to_result(out: Any) -> ToolResult:
    if isinstance(out, ToolResult):
        return out
    if out is None:
        return ToolResult("done")
    if isinstance(out, str):
        return ToolResult(out)
    if isinstance(out, BaseModel):
        return ToolResult(out.model_dump_json(), data=out.model_dump())
    try:
        return ToolResult(json.dumps(out, ensure_ascii=False), data=out)
    except (TypeError, ValueError):
        return ToolResult(str(out), data=out)


def run_coroutine_blocking(coro: Any) -> Any:
    """Run an async tool from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def validation_message(tool_name: str, e: ValidationError) -> str:
    """pydantic's message, minus the documentation links (noise for a model)."""
    lines = [ln for ln in str(e).splitlines() if "errors.pydantic.dev" not in ln]
    return f"Invalid arguments for {tool_name}: " + "\n".join(lines)


# --- docstrings -------------------------------------------------------------------------------------

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|Attributes|See Also):\s*$"
)
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_REST_PARAM = re.compile(r"^:param\s+(?:[^:]+\s+)?(\w+):\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a (dedented) docstring into the description and per-parameter descriptions.

    Understands a Google-style `Args:` section (`name (type): text`, continuation lines indented
    deeper) and reST `:param name: text` lines."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    entry_indent: int | None = None
    for raw in doc.splitlines():
        line = raw.rstrip()
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        m = _SECTION.match(stripped)
        if m and indent == 0:
            section, current, entry_indent = m.group(1).lower(), None, None
            continue
        rest = _REST_PARAM.match(stripped)
        if rest:
            section, current = "rest", rest.group(1)
            params[current] = rest.group(2).strip()
            continue
        if section == "rest" and stripped.startswith(":"):
            section = "other"  # :returns:, :raises: ... end the parameter
            continue
        if section is None:
            summary.append(line)
            continue
        if section in ("args", "arguments", "parameters", "params", "rest"):
            if not stripped:
                continue
            if section != "rest" and indent == 0:
                section = "other"  # unindented prose ends the section
                continue
            if entry_indent is None:
                entry_indent = indent
            arg = _ARG_LINE.match(stripped) if indent == entry_indent else None
            if arg:
                current = arg.group(1)
                params[current] = arg.group(2).strip()
            elif current is not None:
                params[current] = (params[current] + " " + stripped).strip()
    return unwrap("\n".join(summary)), params


def unwrap(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph (docstrings are wrapped for the source file,
    not for the model); blank lines still separate paragraphs."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs if p.strip())


def strip_titles(node: Any, in_properties: bool = False) -> Any:
    """Make a pydantic JSON schema lean for the prompt (small models read every token of it):
    drop the auto-generated `title`s (a *property* called `title` is kept, which is why the walk
    knows when it is inside `properties`), and write an optional `X | None = None` as plain `X`
    (None stays accepted by the pydantic model; the model simply leaves the argument out)."""
    if isinstance(node, list):
        return [strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    if in_properties:
        return {k: strip_titles(v) for k, v in node.items()}
    out = {
        k: strip_titles(v, in_properties=k in ("properties", "$defs", "patternProperties"))
        for k, v in node.items()
        if not (k == "title" and isinstance(v, str))
    }
    variants = out.get("anyOf")
    if "default" in out and out["default"] is None and isinstance(variants, list) and len(variants) == 2:
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            rest = {k: v for k, v in out.items() if k not in ("anyOf", "default")}
            out = {**kept[0], **rest}
    return out
