"""The tool-call syntax each family was trained on, as `JinjaChatFormat` variants.

The checkpoint's own chat template renders the conversation (model/chat.py); what differs between
families is how the model writes a call, so that is what these classes parse:
- Hermes / Qwen style (Falcon-H1, Bamba, Granite 4.0, Qwen3-Next and most ChatML templates):
  `<tool_call>{json}</tool_call>`, `JinjaChatFormat` itself;
- Nemotron-H (Nemotron Nano 2): `<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>`, a JSON
  list of calls in one block;
- OLMo 3 style: `<function_calls>` then one Python-like call per line, `name(key="value", n=1)`, then
  `</function_calls>`. Read with `ast` (parsed, never evaluated): only keyword arguments with literal
  values are accepted; JSON's true/false/null are accepted too.
- Qwen3-Coder / Qwen3.5: `<tool_call><function=name><parameter=key>value</parameter>...</function>
  </tool_call>`, each value as plain text (Hermes JSON inside `<tool_call>` is read too). A value is
  kept as text where the tool's schema says string (or says nothing), else read as JSON when it is
  JSON: the schemas are the ones the conversation was last rendered with.
- LFM2: `<|tool_call_start|>[name(key="value"), ...]<|tool_call_end|>`, the same calls as a Python list
  (its templates list the tools between `<|tool_list_start|>` and `<|tool_list_end|>`).
- Kimi (Kimi K2, Kimi Linear): `<|tool_calls_section_begin|>` then, per call,
  `<|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{json}<|tool_call_end|>`, then
  `<|tool_calls_section_end|>`; the call id is `functions.{name}:{index}` (a bare name is read too).
The variant is picked from the template's text (it teaches the model its syntax), not from the family.
Each has a `call_example`, the shape a malformed call is told to take (agent/toolcalls.py).
tests/checkpoints/templates/ holds a template of each family's format, written after the published ones.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from typing import Any

from hybrid_agent.model.chat import ChatMessage, ParsedToolCall, call_from_object, load_call_json
from hybrid_agent.model.chat_jinja import JinjaChatFormat


class NemotronToolCalls(JinjaChatFormat):
    tool_call_open = "<TOOLCALL>"
    tool_call_close = "</TOOLCALL>"
    call_example = '<TOOLCALL>[{"name": "...", "arguments": {...}}]</TOOLCALL>'

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        obj, error = load_call_json(body)
        if error is not None:
            return [ParsedToolCall(None, {}, raw, error)]
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            return [ParsedToolCall(None, {}, raw, "the <TOOLCALL> list is empty")]
        return [call_from_object(item, raw, what="each tool call") for item in items]


_JSON_LITERALS = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> Any:
    """The JSON value a literal stands for; ValueError for anything else (bytes, complex numbers, sets,
    `...`, non-finite floats, non-string keys), which a JSON object of arguments cannot hold."""
    if isinstance(node, ast.Name) and node.id in _JSON_LITERALS:
        return _JSON_LITERALS[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is not None:
                key = _literal(k)
                if not isinstance(key, str):
                    raise ValueError(f"the key {key!r} is not a string")
                out[key] = _literal(v)
        return out
    value = ast.literal_eval(node)  # numbers, strings, True/False/None, signed numbers; else ValueError
    if isinstance(value, int):
        str(value)  # ValueError for an int too long to write in decimal (a huge hex literal)
        return value
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def _python_tree(body: str, raw: str, mode: str) -> ast.AST | ParsedToolCall:
    """`body` parsed (never evaluated), or the error call the model reads back."""
    try:
        return ast.parse(body, mode=mode)
    except SyntaxError as e:
        return ParsedToolCall(
            None, {}, raw, f"the function call is not valid syntax ({e.msg}, line {e.lineno})"
        )
    except ValueError as e:  # a lone surrogate cannot be encoded for the parser
        return ParsedToolCall(None, {}, raw, f"the function call is not valid text ({e})")
    except (MemoryError, RecursionError):  # the parser's own stack ran out
        return ParsedToolCall(None, {}, raw, "the function call is not valid syntax (nested too deeply)")


def _python_call(node: ast.AST | None, raw: str, shape: str) -> ParsedToolCall:
    """One `name(key=literal, ...)` call; `shape` says how to write one when `node` is not a call."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ParsedToolCall(None, {}, raw, shape)
    name = node.func.id
    if node.args or any(k.arg is None for k in node.keywords):
        return ParsedToolCall(name, {}, raw, "pass every argument by name: name(key=value)")
    try:
        args = {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
    except (ValueError, TypeError, SyntaxError):
        return ParsedToolCall(name, {}, raw, "argument values must be literals (strings, numbers, ...)")
    return ParsedToolCall(name, args, raw)


class PythonicToolCalls(JinjaChatFormat):
    tool_call_open = "<function_calls>"
    tool_call_close = "</function_calls>"
    call_example = '<function_calls>\nname(key="value")\n</function_calls>'

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        tree = _python_tree(body, raw, "exec")
        if isinstance(tree, ParsedToolCall):
            return [tree]
        assert isinstance(tree, ast.Module)
        shape = "write each call as name(key=value, ...) on its own line"
        calls = [_python_call(s.value if isinstance(s, ast.Expr) else None, raw, shape) for s in tree.body]
        return calls or [ParsedToolCall(None, {}, raw, "the <function_calls> block holds no call")]


def _schema_types(schema: Any) -> set[str]:
    """The JSON types a parameter's schema allows (`type`, a list of types, or anyOf / oneOf)."""
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    types = {kind} if isinstance(kind, str) else {t for t in kind or () if isinstance(t, str)}
    for alt in (*(schema.get("anyOf") or ()), *(schema.get("oneOf") or ())):
        types |= _schema_types(alt)
    return types


class XmlToolCalls(JinjaChatFormat):
    """`<function=name>` with one `<parameter=key>` block per argument, inside `<tool_call>`."""

    call_example = (
        "<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>\n</tool_call>"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._params: dict[str, dict[str, Any]] = {}  # tool name -> its parameters' schemas

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool,
        tools: Sequence[dict[str, Any]] = (),
    ) -> str:
        if tools:  # remembered for the types of the values the model writes back
            self._params = {
                str(t.get("name")): dict((t.get("parameters") or {}).get("properties") or {}) for t in tools
            }
        return super().render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def _value(self, tool: str, key: str, text: str) -> Any:
        types = _schema_types(self._params.get(tool, {}).get(key))
        if not types or "string" in types:
            return text
        value, error = load_call_json(text.strip())
        return text if error is not None else value

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        if not body.startswith("<function="):
            return super().parse_block(body, raw)  # Hermes JSON
        calls: list[ParsedToolCall] = []
        pos = 0
        while (start := body.find("<function=", pos)) >= 0:
            name_end = body.find(">", start)
            end = body.find("</function>", start)
            if name_end < 0 or end < 0 or name_end > end:
                return [
                    *calls,
                    ParsedToolCall(None, {}, raw, "write a call as <function=name>...</function>"),
                ]
            name = body[start + len("<function=") : name_end].strip()
            if not name:
                return [*calls, ParsedToolCall(None, {}, raw, "the <function=...> tag names no function")]
            args, error = self._arguments(name, body[name_end + 1 : end])
            calls.append(ParsedToolCall(name, {} if error else args, raw, error))
            pos = end + len("</function>")
        return calls

    def _arguments(self, tool: str, body: str) -> tuple[dict[str, Any], str | None]:
        args: dict[str, Any] = {}
        pos = 0
        while (start := body.find("<parameter=", pos)) >= 0:
            key_end = body.find(">", start)
            end = body.find("</parameter>", start)
            if key_end < 0 or end < 0 or key_end > end:
                return args, "write each argument as <parameter=name>value</parameter>"
            key = body[start + len("<parameter=") : key_end].strip()
            text = body[key_end + 1 : end]
            # The template writes each value on its own lines: one newline either side is markup.
            text = text[1:] if text.startswith("\n") else text
            text = text[:-1] if text.endswith("\n") else text
            args[key] = self._value(tool, key, text)
            pos = end + len("</parameter>")
        return args, None


class Lfm2ToolCalls(JinjaChatFormat):
    """LFM2: `<|tool_call_start|>[name(key="value", n=1), other(...)]<|tool_call_end|>`, a Python list of
    calls (one bare call is accepted too); a JSON list of `{"name", "arguments"}` objects, which LFM2 writes
    when its system prompt asks for JSON, is read as well."""

    tool_call_open = "<|tool_call_start|>"
    tool_call_close = "<|tool_call_end|>"
    call_example = '<|tool_call_start|>[name(key="value")]<|tool_call_end|>'

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        if not body:
            return [ParsedToolCall(None, {}, raw, "the tool call list is empty")]
        if body.startswith(("[{", "{")):
            obj, error = load_call_json(body)
            if error is None:
                items = obj if isinstance(obj, list) else [obj]
                return [call_from_object(item, raw, what="each tool call") for item in items] or [
                    ParsedToolCall(None, {}, raw, "the tool call list is empty")
                ]
        tree = _python_tree(body, raw, "eval")
        if isinstance(tree, ParsedToolCall):
            return [tree]
        assert isinstance(tree, ast.Expression)
        nodes = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
        shape = "write the calls as a list: [name(key=value, ...), ...]"
        calls = [_python_call(node, raw, shape) for node in nodes]
        return calls or [ParsedToolCall(None, {}, raw, "the tool call list is empty")]


class KimiToolCalls(JinjaChatFormat):
    """Kimi: a section of calls, each an id (`functions.name:index`) and its JSON arguments."""

    tool_call_open = "<|tool_calls_section_begin|>"
    tool_call_close = "<|tool_calls_section_end|>"
    CALL_OPEN, ARGS, CALL_CLOSE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
    call_example = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>"
        "{...}<|tool_call_end|><|tool_calls_section_end|>"
    )

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        calls: list[ParsedToolCall] = []
        pos = 0
        while (start := body.find(self.CALL_OPEN, pos)) >= 0:
            mid = body.find(self.ARGS, start)
            end = body.find(self.CALL_CLOSE, start)
            if mid < 0 or end < 0 or mid > end:
                shape = (
                    f"write a call as {self.CALL_OPEN}functions.name:0{self.ARGS}{{json}}{self.CALL_CLOSE}"
                )
                return [*calls, ParsedToolCall(None, {}, raw, shape)]
            call_id = body[start + len(self.CALL_OPEN) : mid].strip()
            name = call_id.removeprefix("functions.").rsplit(":", 1)[0].strip()
            if not name:
                return [*calls, ParsedToolCall(None, {}, raw, "the tool call names no function")]
            text = body[mid + len(self.ARGS) : end].strip()
            args, error = load_call_json(text) if text else ({}, None)
            if error is None and not isinstance(args, dict):
                error = "the arguments must be a JSON object"
            calls.append(ParsedToolCall(name, {} if error else args, raw, error, call_id=call_id))
            pos = end + len(self.CALL_CLOSE)
        return calls or [ParsedToolCall(None, {}, raw, "the tool call section holds no call")]


def format_class_for(template: str) -> type[JinjaChatFormat]:
    """The tool-call syntax a chat template teaches (Hermes `<tool_call>` when it names none)."""
    if "<TOOLCALL>" in template:
        return NemotronToolCalls
    if "<function_calls>" in template:
        return PythonicToolCalls
    if "<function=" in template and "<parameter=" in template:
        return XmlToolCalls
    if "<|tool_list_start|>" in template or "<|tool_call_start|>" in template:
        return Lfm2ToolCalls
    if "<|tool_calls_section_begin|>" in template:
        return KimiToolCalls
    return JinjaChatFormat
