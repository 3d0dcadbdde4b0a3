"""The tool-call syntax each family was trained on, as `JinjaChatFormat` variants.

The checkpoint's own chat template renders the conversation (model/chat.py); what differs between
families is how the model writes a call, so that is what these classes parse:
- Hermes / Qwen style (Falcon-H1, Bamba and most ChatML templates): `<tool_call>{json}</tool_call>`,
  `JinjaChatFormat` itself;
- Nemotron-H (Nemotron Nano 2): `<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>`, a JSON
  list of calls in one block;
- OLMo 3 style: `<function_calls>` then one Python-like call per line, `name(key="value", n=1)`, then
  `</function_calls>`. Read with `ast` (parsed, never evaluated): only keyword arguments with literal
  values are accepted; JSON's true/false/null are accepted too.
The variant is picked from the template's text (it teaches the model its syntax), not from the family.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from hybrid_agent.model.chat import JinjaChatFormat, ParsedToolCall


class _BlockToolCalls(JinjaChatFormat):
    """A block between open and close markers holds one or more calls: subclasses parse the body."""

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        raise NotImplementedError

    def parse_tool_calls(self, text: str) -> list[ParsedToolCall]:
        calls: list[ParsedToolCall] = []
        pattern = re.escape(self.tool_call_open) + r"(.*?)" + re.escape(self.tool_call_close)
        for m in re.finditer(pattern, text, flags=re.DOTALL):
            calls += self.parse_block(m.group(1).strip(), m.group(0))
        last_close = text.rfind(self.tool_call_close)
        tail = text[last_close + len(self.tool_call_close) :] if last_close >= 0 else text
        if self.tool_call_open in tail:
            raw = tail[tail.index(self.tool_call_open) :]
            calls.append(
                ParsedToolCall(None, {}, raw, f"the tool call was not closed with {self.tool_call_close}")
            )
        return calls


def _call_from_object(obj: Any, raw: str) -> ParsedToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedToolCall(None, {}, raw, 'each tool call must be a JSON object with a string "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return ParsedToolCall(obj["name"], {}, raw, '"arguments" is a string that is not a JSON object')
    if not isinstance(args, dict):
        return ParsedToolCall(obj["name"], {}, raw, '"arguments" must be a JSON object')
    return ParsedToolCall(obj["name"], args, raw)


class NemotronToolCalls(_BlockToolCalls):
    tool_call_open = "<TOOLCALL>"
    tool_call_close = "</TOOLCALL>"

    def parse_block(self, body: str, raw: str) -> list[ParsedToolCall]:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            return [
                ParsedToolCall(None, {}, raw, f"the tool call is not valid JSON ({e.msg} at char {e.pos})")
            ]
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            return [ParsedToolCall(None, {}, raw, "the <TOOLCALL> list is empty")]
        return [_call_from_object(item, raw) for item in items]


_JSON_LITERALS = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_LITERALS:
        return _JSON_LITERALS[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {
            _literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None
        }
    return ast.literal_eval(node)  # numbers, strings, True/False/None, signed numbers; else ValueError


class PythonicToolCalls(_BlockToolCalls):
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
