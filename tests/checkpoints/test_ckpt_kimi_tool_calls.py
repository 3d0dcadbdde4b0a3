"""Kimi's tool-call syntax (Kimi K2, Kimi Linear): a section of calls, each `functions.name:index` and
its JSON arguments; picked from the chat template by load_model."""

from __future__ import annotations

import json

import pytest
from hybrid_agent.model import load_model
from hybrid_agent.model.checkpoints.tool_formats import KimiToolCalls, format_class_for

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
B, E = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
C, A, D = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def test_kimi_section_of_calls():
    text = (
        f'Reading both.{B}{C}functions.read_file:0{A}{{"path": "a.py", "n": 2}}{D}'
        f'{C} functions.list_dir:1 {A} {{}} {D}{C}grep{A}{{"q": "x"}}{D}{E}'
    )
    fmt = KimiToolCalls(TEMPLATE)
    calls = fmt.parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("read_file", {"path": "a.py", "n": 2}, None),
        ("list_dir", {}, None),
        ("grep", {"q": "x"}, None),
    ]
    assert fmt.visible_text(text) == "Reading both."


@pytest.mark.parametrize(
    "body, error",
    [
        (f"{C}functions.f:0{{}}{D}", "write a call as"),
        (f"{C}functions.f:0{A}{{bad{D}", "not valid JSON"),
        (f"{C}functions.f:0{A}[1]{D}", "must be a JSON object"),
        (f"{C}:0{A}{{}}{D}", "names no function"),
        ("no calls here", "holds no call"),
    ],
)
def test_kimi_malformed_calls_become_errors(body, error):
    calls = KimiToolCalls(TEMPLATE).parse_tool_calls(f"{B}{body}{E}")
    assert calls[-1].error is not None and error in calls[-1].error


def test_the_template_picks_kimi_and_load_model_uses_it(checkpoint):
    assert format_class_for(f"{{% if m.tool_calls %}}{B}...{E}{{% endif %}}") is KimiToolCalls
    folder, _ = checkpoint("kimi_linear")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] += f"{{% if tools %}}{B}{C}functions.name:0{A}{{}}{D}{E}{{% endif %}}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    _, _, chat = load_model(folder)
    assert isinstance(chat, KimiToolCalls)
