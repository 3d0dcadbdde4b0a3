"""The tool API: @tool, Tool subclasses, generated schemas, validation, policies, failures as results."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from hybrid_agent.tools import (
    Tool,
    ToolContext,
    ToolDefinitionError,
    ToolError,
    ToolRegistry,
    ToolResult,
    tool,
)
from hybrid_agent.tools.base import parse_docstring
from pydantic import BaseModel, Field


@tool(policy="auto")
def add_numbers(a: int, b: int = 2, mode: Literal["sum", "diff"] = "sum") -> int:
    """Add or subtract two integers.

    Used by the tests.

    Args:
        a: The first number.
        b (int): The second number,
            which defaults to two.
        mode: Whether to add or subtract.

    Returns:
        The result.
    """
    return a + b if mode == "sum" else a - b


def test_decorator_builds_schema_from_signature_and_docstring():
    assert add_numbers.name == "add_numbers"
    assert add_numbers.policy == "auto"
    assert add_numbers(1, 2) == 3  # still callable as a function
    assert add_numbers.schema() == {
        "type": "function",
        "function": {
            "name": "add_numbers",
            "description": "Add or subtract two integers.\n\nUsed by the tests.",
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "a": {"type": "integer", "description": "The first number."},
                    "b": {
                        "type": "integer",
                        "default": 2,
                        "description": "The second number, which defaults to two.",
                    },
                    "mode": {
                        "type": "string",
                        "enum": ["sum", "diff"],
                        "default": "sum",
                        "description": "Whether to add or subtract.",
                    },
                },
                "required": ["a"],
            },
        },
    }


def test_docstring_parser_variants():
    summary, params = parse_docstring("Do it.\n\n:param x: the x\n:param int y: the y\n:returns: nothing\n")
    assert summary == "Do it." and params == {"x": "the x", "y": "the y"}
    summary, params = parse_docstring("One line only.")
    assert summary == "One line only." and params == {}


def test_annotated_field_and_property_called_title():
    @tool
    def make_issue(
        title: str,
        labels: Annotated[list[str], Field(description="Labels to set.", max_length=3)] = [],  # noqa: B006
    ) -> str:
        """Open an issue.

        Args:
            title: Its title.
        """
        return f"{title}:{','.join(labels)}"

    params = make_issue.parameters_schema()
    assert params["properties"]["title"] == {"type": "string", "description": "Its title."}
    assert params["properties"]["labels"]["description"] == "Labels to set."
    assert make_issue.policy == "ask"  # unknown side effects: ask by default


def test_registered_function_runs_through_registry(registry):
    registry.register(add_numbers)
    assert registry.get("add_numbers").source == "code"
    res = registry.call("add_numbers", {"a": 5, "b": 3, "mode": "diff"})
    assert res == ToolResult("2", data=2)
    assert any(s["function"]["name"] == "add_numbers" for s in registry.schemas())


def test_validation_failure_is_an_error_result_with_pydantic_message(registry):
    registry.register(add_numbers)
    res = registry.call("add_numbers", {"a": "five", "c": 1})
    assert res.is_error and not res.denied
    assert res.text.startswith("Invalid arguments for add_numbers: 2 validation errors")
    assert "a\n  Input should be a valid integer" in res.text
    assert "c\n  Extra inputs are not permitted" in res.text
    assert "errors.pydantic.dev" not in res.text
    assert registry.call("add_numbers", None).is_error  # type: ignore[arg-type]
    assert "must be a JSON object" in registry.call("add_numbers", ["a"]).text  # type: ignore[arg-type]


def test_tool_subclass_long_form_with_context(registry, sandbox):
    class CountLines(Tool):
        """Count the lines of a file."""

        policy = "auto"

        class Args(BaseModel):
            path: str = Field(description="The file.")

        def run(self, args, ctx: ToolContext) -> ToolResult:
            _, data = ctx.workspace.read_bytes(args.path, max_bytes=1000)
            return ToolResult(str(data.count(b"\n")), data={"turn": ctx.turn})

    t = registry.register(CountLines)
    assert t.name == "count_lines" and t.description == "Count the lines of a file."
    assert registry.call("count_lines", {"path": "hello.txt"}, turn=7) == ToolResult("1", data={"turn": 7})
    res = registry.call("count_lines", {"path": "../outside/secret.txt"})
    assert res.is_error and "outside the workspace" in res.text


def test_context_parameter_and_writes_are_journaled(registry, sandbox):
    @tool
    def stamp(name: str, ctx: ToolContext) -> str:
        """Write a stamp file."""
        rel, _ = ctx.write_bytes(f"stamps/{name}", b"stamped\n")
        return f"stamped {rel}"

    registry.register(stamp)
    assert "ctx" not in stamp.parameters_schema()["properties"]
    res = registry.call("stamp", {"name": "x"}, turn=3)
    assert res.text == "stamped stamps/x"
    [entry] = registry.journal.entries()
    assert (entry.turn, entry.path, entry.before, entry.after) == (3, "stamps/x", None, b"stamped\n")


def test_exceptions_become_error_results(registry):
    @tool(policy="auto")
    def broken() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    @tool(policy="auto")
    def polite() -> str:
        """Fails with our own error type."""
        raise ToolError("try again with a smaller number")

    registry.register(broken)
    registry.register(polite)
    assert registry.call("broken", {}) == ToolResult.error("tool broken failed: RuntimeError: disk on fire")
    assert registry.call("polite", {}) == ToolResult.error("try again with a smaller number")


def test_async_tool(registry):
    @tool(policy="auto")
    async def later(x: int) -> dict:
        """Async tool."""
        return {"x": x}

    registry.register(later)
    assert registry.call("later", {"x": 1}) == ToolResult('{"x": 1}', data={"x": 1})


def test_policies_and_approval(registry, sandbox):
    assert registry.policy("read_file") == "auto"
    assert registry.policy("write_file") == "ask" and registry.policy("edit_file") == "ask"
    before = sandbox.state()
    res = registry.call("write_file", {"path": "x.txt", "content": "x"}, approve=False)
    assert res.is_error and res.denied and "did not approve" in res.text
    assert sandbox.state() == before
    registry.set_policy("read_file", "deny")
    res = registry.call("read_file", {"path": "hello.txt"})
    assert res.is_error and res.denied and "disabled by policy" in res.text
    assert "read_file" not in [s["function"]["name"] for s in registry.schemas()]
    registry.set_policy("write_file", "auto")
    assert not registry.call("write_file", {"path": "x.txt", "content": "x"}, approve=False).is_error
    with pytest.raises(ToolError, match="policy must be one of"):
        registry.set_policy("write_file", "sometimes")  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="unknown tool"):
        registry.set_policy("nope", "auto")


def test_policies_from_constructor_and_commands_off_by_default(sandbox):
    reg = ToolRegistry(sandbox.ws, load_plugins=False, policies={"edit_file": "deny"})
    assert reg.policy("edit_file") == "deny"
    assert "run_command" not in reg.names()
    res = reg.call("run_command", {"command": "true"})
    assert res.is_error and "unknown tool 'run_command'" in res.text
    assert "run_command" in ToolRegistry(sandbox.ws, load_plugins=False, enable_commands=True).names()


def test_unknown_tool_and_duplicates(registry):
    res = registry.call("nope", {})
    assert res.is_error and "unknown tool 'nope'" in res.text and "read_file" in res.text
    registry.register(add_numbers)
    with pytest.raises(ToolDefinitionError, match="exists already"):
        registry.register(add_numbers)
    registry.register(add_numbers, replace=True)


def test_bad_definitions_raise_clear_errors():
    with pytest.raises(ToolDefinitionError, match="needs a type hint"):

        @tool
        def untyped(x) -> str:  # type: ignore[no-untyped-def]
            """Doc."""
            return x

    with pytest.raises(ToolDefinitionError, match="no description"):

        @tool
        def undocumented(x: int) -> int:
            return x

    with pytest.raises(ToolDefinitionError, match="not usable"):
        tool(name="has space")(add_numbers.fn)
    with pytest.raises(ToolDefinitionError, match="policy must be one of"):
        tool(policy="maybe")(add_numbers.fn)  # type: ignore[arg-type]


def test_preview_never_raises(registry):
    assert "Invalid arguments" in registry.preview("write_file", {"path": 3}).summary
    assert "unknown tool" in registry.preview("nope", {}).summary
    p = registry.preview("read_file", {"path": "hello.txt"})
    assert p.path == "hello.txt" and p.diff is None


def test_optional_parameters_are_plain_in_the_schema(registry):
    @tool(policy="auto")
    def pick(limit: int | None = None, tag: str | None = None) -> str:
        """Pick things.

        Args:
            limit: At most this many;
                leave out for all.
        """
        return f"{limit}:{tag}"

    registry.register(pick)
    assert pick.parameters_schema() == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "limit": {"type": "integer", "description": "At most this many; leave out for all."},
            "tag": {"type": "string"},
        },
    }
    assert registry.call("pick", {}).text == "None:None"
    assert registry.call("pick", {"limit": None, "tag": "a"}).text == "None:a"


def test_subclass_without_description_is_refused():
    class Silent(Tool):
        def run(self, args, ctx):
            return ToolResult("")

    with pytest.raises(ToolDefinitionError, match="'silent' has no description"):
        Silent()


def test_buggy_argument_parsing_is_a_result(registry):
    class Odd(Tool):
        """Parses its own arguments, badly."""

        policy = "auto"

        def parse_arguments(self, arguments):
            raise KeyError("oops")

    registry.register(Odd)
    res = registry.call("odd", {})
    assert res.is_error and res.text == "tool odd could not read its arguments: KeyError: 'oops'"
