"""Tool-call syntaxes of the families: Hermes (default), Nemotron's <TOOLCALL> list, OLMo 3's pythonic
<function_calls>; picked from the chat template by load_model."""

from __future__ import annotations

import json

import pytest
from hybrid_agent.model import load_model
from hybrid_agent.model.chat import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import NemotronToolCalls, PythonicToolCalls, format_class_for

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


def test_load_model_uses_the_templates_syntax(checkpoint):
    folder, _ = checkpoint("nemotron_h")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] += "{% if tools %}Call tools as <TOOLCALL>[...]</TOOLCALL>{% endif %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    _, _, chat = load_model(folder)
    assert isinstance(chat, NemotronToolCalls)
    assert "<|im_end|>" in chat.stop_strings
