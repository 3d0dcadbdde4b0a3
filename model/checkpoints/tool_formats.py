"""The tool-call syntax each family was trained on, as `JinjaChatFormat` variants.

The checkpoint's own chat template renders the conversation (model/chat.py); what differs between
families is how the model writes a call, so that is what these classes parse:
- Hermes / Qwen style (Falcon-H1, Bamba, Granite 4.0 and most ChatML templates):
  `<tool_call>{json}</tool_call>`, `JinjaChatFormat` itself;
- Nemotron-H (Nemotron Nano 2): `<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>`, a JSON
  list of calls in one block;
- OLMo 3 style: `<function_calls>` then one Python-like call per line, `name(key="value", n=1)`, then
  `</function_calls>`. Read with `ast` (parsed, never evaluated): only keyword arguments with literal
  values are accepted; JSON's true/false/null are accepted too.
The variant is picked from the template's text (it teaches the model its syntax), not from the family.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from hybrid_agent.model.chat import JinjaChatFormat, ParsedToolCall, call_from_object, load_call_json


class NemotronToolCalls(JinjaChatFormat):
    tool_call_open = "<TOOLCALL>"
    tool_call_close = "</TOOLCALL>"

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


class PythonicToolCalls(JinjaChatFormat):
    tool_call_open = "<function_calls>"
    tool_call_close = "</function_calls>"

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        try:
            tree = ast.parse(body, mode="exec")
        except SyntaxError as e:
            return [
                ParsedToolCall(
                    None, {}, raw, f"the function call is not valid syntax ({e.msg}, line {e.lineno})"
                )
            ]
        except ValueError as e:  # a lone surrogate cannot be encoded for the parser
            return [ParsedToolCall(None, {}, raw, f"the function call is not valid text ({e})")]
        except (MemoryError, RecursionError):  # the parser's own stack ran out
            return [
                ParsedToolCall(None, {}, raw, "the function call is not valid syntax (nested too deeply)")
            ]
        calls: list[ParsedToolCall] = []
        for stmt in tree.body:
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
                calls.append(
                    ParsedToolCall(None, {}, raw, "write each call as name(key=value, ...) on its own line")
                )
                continue
            name = call.func.id
            if call.args or any(k.arg is None for k in call.keywords):
                calls.append(ParsedToolCall(name, {}, raw, "pass every argument by name: name(key=value)"))
                continue
            try:
                args = {k.arg: _literal(k.value) for k in call.keywords if k.arg is not None}
            except (ValueError, TypeError, SyntaxError):
                calls.append(
                    ParsedToolCall(name, {}, raw, "argument values must be literals (strings, numbers, ...)")
                )
                continue
            calls.append(ParsedToolCall(name, args, raw))
        return calls or [ParsedToolCall(None, {}, raw, "the <function_calls> block holds no call")]


def format_class_for(template: str) -> type[JinjaChatFormat]:
    """The tool-call syntax a chat template teaches (Hermes `<tool_call>` when it names none)."""
    if "<TOOLCALL>" in template:
        return NemotronToolCalls
    if "<function_calls>" in template:
        return PythonicToolCalls
    return JinjaChatFormat
