"""Granite 4.0's chat format: role tags `<|start_of_role|>role<|end_of_role|>...<|end_of_text|>`, the tool
list in the system turn, calls written Hermes style (`<tool_call>\\n{json}\\n</tool_call>`, one block per
call) and tool results sent back in a user turn as `<tool_response>` blocks. No special class is needed:
the template names neither <TOOLCALL> nor <function_calls>, so `format_class_for` picks the Hermes parser
(`JinjaChatFormat`), and the template only appends, so segments are prefix-stable."""

from __future__ import annotations

import json

from hybrid_agent.model import load_model
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import format_class_for

# A template of the same shape as Granite 4.0's (written for this test, shorter).
GRANITE_TEMPLATE = (
    "{%- set ns = namespace(system='') %}"
    "{%- if messages[0].role == 'system' %}{%- set ns.system = messages[0].content %}{%- endif %}"
    "{%- if tools %}{%- set ns.system = ns.system + '\\n\\nTools, in <tools></tools> tags:\\n<tools>' %}"
    "{%- for t in tools %}{%- set ns.system = ns.system + '\\n' + (t | tojson) %}{%- endfor %}"
    "{%- set ns.system = ns.system + '\\n</tools>\\n\\nCall a tool as <tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>.\' %}{%- endif %}'
    "{{- '<|start_of_role|>system<|end_of_role|>' + ns.system + '<|end_of_text|>\\n' }}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}"
    "{{- '<|start_of_role|>user<|end_of_role|>' + m.content + '<|end_of_text|>\\n' }}"
    "{%- elif m.role == 'assistant' %}"
    "{{- '<|start_of_role|>assistant<|end_of_role|>' + m.content + '<|end_of_text|>\\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|start_of_role|>user<|end_of_role|>' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|end_of_text|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)
EOT = "<|end_of_text|>"
TOOLS = [{"name": "read_file", "description": "Read a file", "parameters": {"type": "object"}}]
TWO_CALLS = (
    "I'll read both.\n"
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "b.py"}}\n</tool_call>'
)


def test_granite_template_picks_the_hermes_syntax():
    assert format_class_for(GRANITE_TEMPLATE) is JinjaChatFormat
    assert format_class_for(json.dumps(GRANITE_TEMPLATE)) is JinjaChatFormat  # as load_model passes it


def test_granite_calls_one_block_each():
    chat = JinjaChatFormat(GRANITE_TEMPLATE, eos_token=EOT)
    calls = chat.parse_tool_calls(TWO_CALLS + EOT)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "a.py"}, None),
        ("read_file", {"path": "b.py"}, None),
    ]
    assert chat.visible_text(TWO_CALLS + EOT).strip() == "I'll read both."


def test_granite_tool_results_go_back_in_one_user_turn():
    chat = JinjaChatFormat(GRANITE_TEMPLATE, eos_token=EOT)
    first = chat.segment([], [ChatMessage("user", "read a.py and b.py")], system="Be brief.", tools=TOOLS)
    assert first.text.startswith("<|start_of_role|>system<|end_of_role|>Be brief.")
    assert '"name": "read_file"' in first.text and first.text.endswith(
        "<|start_of_role|>assistant<|end_of_role|>"
    )
    history = [ChatMessage("user", "read a.py and b.py"), ChatMessage("assistant", "", raw=TWO_CALLS + EOT)]
    results = [ChatMessage("tool", "print(1)", name="read_file"), ChatMessage("tool", "x <|end_of_text|>")]
    seg = chat.segment(history, results, system="Be brief.", tools=TOOLS)  # prefix-stable, or it raises
    assert seg.text == (
        "\n<|start_of_role|>user<|end_of_role|>\n<tool_response>\nprint(1)\n</tool_response>"
        "\n<tool_response>\nx <|end_of_text|>\n</tool_response><|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    )
    # Tool output is content, never markup: a result that spells a control token stays plain text.
    assert ("x <|end_of_text|>", False) in seg.pieces


def test_load_model_reads_granite_tool_calls(checkpoint):
    folder, _ = checkpoint("granitemoehybrid")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": GRANITE_TEMPLATE}))
    _, _, chat = load_model(folder)
    assert type(chat) is JinjaChatFormat
    assert [c.name for c in chat.parse_tool_calls(TWO_CALLS)] == ["read_file", "read_file"]
