"""Tool-call syntaxes of the families: Hermes (default), Nemotron's <TOOLCALL> list, OLMo 3's pythonic
<function_calls>, Qwen3.5's <function=...> XML; picked from the chat template by load_model."""

from __future__ import annotations

import json

import pytest
from hybrid_agent.model import load_model
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import (
    NemotronToolCalls,
    PythonicToolCalls,
    XmlToolCalls,
    format_class_for,
)

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_nemotron_list_of_calls():
    chat = NemotronToolCalls(TEMPLATE)
    text = (
        'Let me look.<TOOLCALL>[{"name": "read_file", "arguments": {"path": "a.py"}}, '
        '{"name": "grep", "arguments": "{\\"pattern\\": \\"x\\"}"}]</TOOLCALL>'
    )
    calls = chat.parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "a.py"}, None),
        ("grep", {"pattern": "x"}, None),
    ]
    assert chat.visible_text(text) == "Let me look."


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('<TOOLCALL>[{"name": 1}]</TOOLCALL>', 'string "name"'),
        ('<TOOLCALL>[{"name": "f", "arguments": [1]}]</TOOLCALL>', "must be a JSON object"),
        ('<TOOLCALL>[{"name": "f"</TOOLCALL>', "not valid JSON"),
        ("<TOOLCALL>[]</TOOLCALL>", "empty"),
        ('<TOOLCALL>[{"name": "f"}]', "not closed"),
    ],
)
def test_nemotron_malformed_calls_become_errors_the_model_can_read(text, error):
    calls = NemotronToolCalls(TEMPLATE).parse_tool_calls(text)
    assert len(calls) == 1 and calls[0].error is not None and error in calls[0].error


def test_pythonic_calls_one_per_line():
    chat = PythonicToolCalls(TEMPLATE)
    text = (
        'Sure.<function_calls>\nread_file(path="src/a.py", max_lines=-20)\n'
        "edit(path='b', new={\"k\": [1, 2.5, null]}, dry=true, force=False)\n</function_calls>"
    )
    calls = chat.parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "src/a.py", "max_lines": -20}, None),
        ("edit", {"path": "b", "new": {"k": [1, 2.5, None]}, "dry": True, "force": False}, None),
    ]
    assert chat.visible_text(text) == "Sure."


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("read_file('a.py')", "by name"),
        ("read_file(path=open('x').read())", "literals"),
        ("import os", "on its own line"),
        ("read_file(path=", "not valid syntax"),
        ("", "holds no call"),
        ("f(**kw)", "by name"),
    ],
)
def test_pythonic_calls_are_parsed_never_run(body, error):
    calls = PythonicToolCalls(TEMPLATE).parse_tool_calls(f"<function_calls>{body}</function_calls>")
    assert len(calls) == 1 and calls[0].error is not None and error in calls[0].error


def test_the_template_picks_the_syntax():
    assert format_class_for("... <TOOLCALL>[...]</TOOLCALL> ...") is NemotronToolCalls
    assert format_class_for("Output calls within <function_calls></function_calls>") is PythonicToolCalls
    assert format_class_for("<tool_call>{...}</tool_call>") is JinjaChatFormat
    assert format_class_for("<tool_call>\n<function=f>\n<parameter=p>\nv\n</parameter>") is XmlToolCalls


QWEN_CALLS = (
    "Reading both.\n<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/a.py\n</parameter>\n"
    "<parameter=max_lines>\n20\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=write>\n"
    '<parameter=content>\n{"a": 1}\n\n</parameter>\n<parameter=flags>\n["x", true]\n</parameter>\n'
    "</function>\n</tool_call>"
)
TOOLS = [
    {"name": "read_file", "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "max_lines": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}},
    {"name": "write", "parameters": {"type": "object", "properties": {
        "content": {"type": "string"}, "flags": {"type": "array"}}}},
]  # fmt: skip


def test_qwen_xml_calls_typed_by_the_tools_schemas():
    chat = XmlToolCalls(TEMPLATE)
    chat.segment([], [ChatMessage("user", "hi")], tools=TOOLS)  # the schemas the model was shown
    calls = chat.parse_tool_calls(QWEN_CALLS)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "src/a.py", "max_lines": 20}, None),
        ("write", {"content": '{"a": 1}\n', "flags": ["x", True]}, None),  # a string stays text
    ]
    assert chat.visible_text(QWEN_CALLS) == "Reading both.\n\n"


def test_qwen_xml_without_schemas_keeps_text_and_reads_hermes_json():
    chat = XmlToolCalls(TEMPLATE)
    calls = chat.parse_tool_calls(QWEN_CALLS)
    assert calls[0].arguments == {"path": "src/a.py", "max_lines": "20"}  # pydantic coerces "20" later
    hermes = chat.parse_tool_calls('<tool_call>{"name": "f", "arguments": {"n": 1}}</tool_call>')
    assert [(c.name, c.arguments, c.error) for c in hermes] == [("f", {"n": 1}, None)]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("<function=f>\n<parameter=p>\nv\n</function>", "<parameter=name>value</parameter>"),
        ("<function=f>\n<parameter=p>v</parameter>", "<function=name>...</function>"),
        ("<function=>\n</function>", "names no function"),
        ("not a call", "not valid JSON"),
    ],
)
def test_qwen_xml_malformed_calls_become_errors(body, error):
    calls = XmlToolCalls(TEMPLATE).parse_tool_calls(f"<tool_call>\n{body}\n</tool_call>")
    assert len(calls) == 1 and calls[0].error is not None and error in calls[0].error


def test_load_model_uses_the_templates_syntax(checkpoint):
    folder, _ = checkpoint("nemotron_h")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] += "{% if tools %}Call tools as <TOOLCALL>[...]</TOOLCALL>{% endif %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    _, _, chat = load_model(folder)
    assert isinstance(chat, NemotronToolCalls)
    assert "<|im_end|>" in chat.stop_strings


def test_load_model_reads_qwen35_calls(checkpoint):
    folder, _ = checkpoint("qwen3_5_text")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] += (
        "{% if tools %}<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\n"
        "value_1\n</parameter>\n</function>\n</tool_call>{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    _, _, chat = load_model(folder)
    assert isinstance(chat, XmlToolCalls)
