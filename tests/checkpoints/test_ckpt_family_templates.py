"""The families' chat templates of tests/checkpoints/templates/ (written after the templates the
checkpoints ship): our sandbox renders each exactly as transformers does (`{% generation %}` blocks,
`message.get`, macros included), and `format_class_for` reads from each the tool-call syntax the
family writes. tests/agent/test_loop_families.py drives them through the agent loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hybrid_agent.model.chat import ChatMessage
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import (
    KimiToolCalls,
    Lfm2ToolCalls,
    NemotronToolCalls,
    XmlToolCalls,
    format_class_for,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
SYNTAX = {
    "qwen3_5": XmlToolCalls,
    "qwen3_next": JinjaChatFormat,
    "granite4": JinjaChatFormat,
    "nemotron_h": NemotronToolCalls,
    "kimi_linear": KimiToolCalls,
    "lfm2": Lfm2ToolCalls,
}
TOOL = {"name": "read_file", "description": "Read a file.", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}  # fmt: skip
CONVERSATION = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "what is in a.txt?"),
    ChatMessage("assistant", "", raw="Let me see.\n</think>\n\nReading it."),
    ChatMessage("tool", "hello", name="read_file", tool_call_id="functions.read_file:0"),
    ChatMessage("tool", "world", name="read_file", tool_call_id="functions.read_file:1"),
    ChatMessage("assistant", "", raw="It says hello world."),
    ChatMessage("user", "thanks"),
]


def test_every_family_has_a_template() -> None:
    assert {p.stem for p in TEMPLATES.glob("*.jinja")} == set(SYNTAX)


@pytest.mark.parametrize("family", sorted(SYNTAX))
def test_the_template_teaches_the_familys_syntax(family: str) -> None:
    template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    assert format_class_for(json.dumps(template)) is SYNTAX[family]


@pytest.mark.parametrize("family", sorted(SYNTAX))
@pytest.mark.parametrize("tools", [[], [TOOL]])
def test_our_sandbox_renders_as_transformers_does(family: str, tools: list) -> None:
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    fmt = SYNTAX[family](template, bos_token="<s>", eos_token="</s>")
    ours = fmt.render(CONVERSATION, add_generation_prompt=True, tools=tools)
    conv = [JinjaChatFormat._as_template_message(m) for m in CONVERSATION]
    theirs, _ = render_jinja_template(
        conversations=[conv],
        tools=[{"type": "function", "function": t} for t in tools] or None,
        chat_template=template,
        add_generation_prompt=True,
        bos_token="<s>",
        eos_token="</s>",
    )
    assert ours == theirs[0]
    assert (
        "thanks" in ours
        and "hello" in ours
        and ("read_file" in ours) == bool(tools or family == "kimi_linear")
    )
