"""One tool call per model family through the agent loop, in that family's own syntax: the family's
chat template (tests/checkpoints/templates/, each written after the template the checkpoints ship)
renders the conversation, the model's scripted reply holds a call as the family writes it (reasoning
first where the family thinks), the loop parses it, runs the real tool, and the result goes back in
the family's tool-result markup, rendered by the same template. The reasoning stays in the state and
never reaches the screen; a malformed call comes back to the model as a tool error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hybrid_agent.agent.events import ErrorEvent, TextDelta, ToolCallRequested, ToolResultEvent, TurnEnd
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import (
    KimiToolCalls,
    Lfm2ToolCalls,
    NemotronToolCalls,
    XmlToolCalls,
    format_class_for,
)
from hybrid_agent.model.tokenizer import ByteTokenizer

TEMPLATES = Path(__file__).resolve().parents[1] / "checkpoints" / "templates"


@dataclass(frozen=True)
class Family:
    template: str  # file in TEMPLATES
    cls: type[JinjaChatFormat]  # the syntax format_class_for must pick
    eos: str
    specials: tuple[str, ...]  # the markup the tokenizer has as single tokens
    call: str  # the model's reply: a call of read_file(path="a.txt"), as the family writes it
    answer: str  # the model's reply once it has read the result
    result: str  # how the template writes the round's result back, RESULT standing for the tool's text
    broken: str  # a malformed call, as a model may write one
    bos: str = ""
    thought: str = ""  # the reasoning in `call`, which must not be shown


QWEN = ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>")
FAMILIES = {
    "qwen3_5": Family(
        "qwen3_5.jinja", XmlToolCalls, "<|im_end|>", QWEN,
        call="The user wants a.txt; read it.\n</think>\n\n<tool_call>\n<function=read_file>\n"
        "<parameter=path>\na.txt\n</parameter>\n</function>\n</tool_call>",
        answer="It read it.\n</think>\n\nIt says hello.<|im_end|>",
        broken="Read it.\n</think>\n\n<tool_call>\n<function=read_file>\n<parameter=path>\na.txt\n"
        "</function>\n</tool_call>",
        result="<|im_end|>\n<|im_start|>user\n<tool_response>\nRESULT\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n",
        thought="The user wants a.txt",
    ),
    "qwen3_next": Family(
        "qwen3_next.jinja", JinjaChatFormat, "<|im_end|>", QWEN,
        call="I will read a.txt.\n</think>\n\n<tool_call>\n"
        '{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>',
        answer="Done.\n</think>\n\nIt says hello.<|im_end|>",
        broken="Read it.\n</think>\n\n<tool_call>\n"
        '{"name": "read_file", "arguments": {"path": }}\n</tool_call>',
        result="<|im_end|>\n<|im_start|>user\n<tool_response>\nRESULT\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n",
        thought="I will read a.txt.",
    ),
    "granite4": Family(
        "granite4.jinja", JinjaChatFormat, "<|end_of_text|>",
        ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<tool_call>", "</tool_call>"),
        call='Reading it.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>',
        answer="It says hello.<|end_of_text|>",
        broken='<tool_call>\n{"name": "read_file", "arguments": {"path": }}\n</tool_call>',
        result="<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>\n<tool_response>\nRESULT\n"
        "</tool_response><|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    ),
    "nemotron_h": Family(
        "nemotron_h.jinja", NemotronToolCalls, "<SPECIAL_12>",
        ("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>", "<think>", "</think>", "<TOOLCALL>", "</TOOLCALL>"),
        call='Need the file.\n</think>\n\n<TOOLCALL>[{"name": "read_file", "arguments": {"path": "a.txt"}}]'
        "</TOOLCALL>",
        answer="Got it.\n</think>\n\nIt says hello.\n<SPECIAL_12>",
        broken="Read it.\n</think>\n\n"
        '<TOOLCALL>[{"name": "read_file", "arguments": {"path": "a.txt"}]</TOOLCALL>',
        result="\n<SPECIAL_12>\n\n<SPECIAL_11>User\n<TOOL_RESPONSE>[RESULT]</TOOL_RESPONSE>\n\n"
        "<SPECIAL_11>Assistant\n<think>\n",
        thought="Need the file.",
    ),
    "kimi_linear": Family(
        "kimi_linear.jinja", KimiToolCalls, "<|im_end|>",
        ("<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>", "<|im_end|>",
         "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
         "<|tool_call_argument_begin|>", "<|tool_call_end|>"),
        call="Reading it.<|tool_calls_section_begin|><|tool_call_begin|>functions.read_file:0"
        '<|tool_call_argument_begin|>{"path": "a.txt"}<|tool_call_end|><|tool_calls_section_end|>',
        answer="It says hello.<|im_end|>",
        broken='<|tool_calls_section_begin|><|tool_call_begin|>functions.read_file:0{"path": "a.txt"}'
        "<|tool_call_end|><|tool_calls_section_end|>",
        result="<|im_end|><|im_system|>read_file<|im_middle|>## Return of functions.read_file:0\nRESULT"
        "<|im_end|><|im_assistant|>assistant<|im_middle|>",
    ),
    "lfm2": Family(
        "lfm2.jinja", Lfm2ToolCalls, "<|im_end|>",
        ("<|startoftext|>", "<|im_start|>", "<|im_end|>", "<|tool_call_start|>", "<|tool_call_end|>",
         "<|tool_response_start|>", "<|tool_response_end|>", "<|tool_list_start|>", "<|tool_list_end|>"),
        call='Reading it.<|tool_call_start|>[read_file(path="a.txt")]<|tool_call_end|>',
        answer="It says hello.<|im_end|>",
        broken='<|tool_call_start|>[read_file(path="a.txt"]<|tool_call_end|>',
        result="<|im_end|>\n<|im_start|>tool\n<|tool_response_start|>RESULT<|tool_response_end|>"
        "<|im_end|>\n<|im_start|>assistant\n",
        bos="<|startoftext|>",
    ),
}  # fmt: skip


def chat_of(family: Family) -> JinjaChatFormat:
    template = (TEMPLATES / family.template).read_text(encoding="utf-8")
    cls = format_class_for(json.dumps(template))  # as load_model picks it
    assert cls is family.cls
    return cls(template, bos_token=family.bos, eos_token=family.eos, name=family.template)


def run(agent: Any, text: str) -> list[Any]:
    return list(agent.send_sync(text))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_tool_call_round_trips_in_the_familys_syntax(name: str, make_agent: Any) -> None:
    family = FAMILIES[name]
    agent, engine = make_agent([family.call, family.answer], chat=chat_of(family))
    engine.tokenizer = ByteTokenizer(family.specials)
    events = run(agent, "what is in a.txt?")
    assert not [e for e in events if isinstance(e, ErrorEvent)], events
    req = next(e for e in events if isinstance(e, ToolCallRequested))
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert (req.tool, req.arguments) == ("read_file", {"path": "a.txt"})
    assert not res.is_error and "hello from a" in res.text  # the real tool ran on the workspace's file
    # The state: the template's own rendering of the system turn (the tools in it) and the user's
    # message, everything the model wrote (reasoning included), the result in the family's markup.
    assert engine.text.startswith(family.bos) and '"name": "read_file"' in engine.text
    second = family.result.replace("RESULT", res.text)
    assert engine.text.endswith(family.call + second + family.answer)
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))  # the answer only
    assert "says hello." in shown and "</think>" not in shown and family.eos not in shown
    assert family.call not in shown and (not family.thought or family.thought not in shown)
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.saved and end.stop_reason == "end_of_turn"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_malformed_call_goes_back_as_a_tool_error(name: str, make_agent: Any) -> None:
    family = FAMILIES[name]
    chat = chat_of(family)
    agent, engine = make_agent([family.broken, family.answer], chat=chat)
    engine.tokenizer = ByteTokenizer(family.specials)
    events = run(agent, "what is in a.txt?")
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert res.is_error and res.text.startswith("error: ")
    assert getattr(chat, "call_example", chat.tool_call_open) in res.text  # how to write one right
    result = family.result.replace("RESULT", res.text)
    if name == "kimi_linear":  # no name nor id could be read from the call: the role, and the loop's id
        named = "read_file<|im_middle|>## Return of functions.read_file:0"
        result = result.replace(named, f"tool<|im_middle|>## Return of {res.call_id}")
    assert engine.text.endswith(family.broken + result + family.answer)
    assert isinstance(events[-1], TurnEnd) and events[-1].saved


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next", "nemotron_h"])
def test_reasoning_dropped_by_the_template_stays_in_the_state(name: str, make_agent: Any) -> None:
    """These templates write earlier replies without their reasoning; the next turn goes on after
    what the model really wrote, and the state keeps it."""
    family = FAMILIES[name]
    agent, engine = make_agent([family.call, family.answer, "Fine.\n</think>\n\nBye." + family.eos],
                               chat=chat_of(family))  # fmt: skip
    engine.tokenizer = ByteTokenizer(family.specials)
    run(agent, "what is in a.txt?")
    before = engine.text
    events = run(agent, "thanks")
    assert isinstance(events[-1], TurnEnd) and events[-1].saved, events
    assert engine.text.startswith(before) and family.thought in engine.text
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Bye."
    assert engine.text.split("thanks")[-1].endswith("\n<think>\nFine.\n</think>\n\nBye." + family.eos)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_resumed_session_goes_on_in_the_same_syntax(name: str, make_agent: Any) -> None:
    """The conversation rebuilt from the stored events (the tool result's call id included, which
    Kimi's template writes) renders as the live one did: the next turn goes on without an error."""
    family = FAMILIES[name]
    agent, engine = make_agent([family.call, family.answer], chat=chat_of(family))
    engine.tokenizer = ByteTokenizer(family.specials)
    run(agent, "what is in a.txt?")
    again = "Fine.\n</think>\n\nBye." if family.thought else "Bye."
    other, engine2 = make_agent([again + family.eos], chat=chat_of(family), session_id=agent.session_id)
    engine2.tokenizer = ByteTokenizer(family.specials)
    assert engine2.tokens == engine.tokens
    events = run(other, "thanks")
    assert isinstance(events[-1], TurnEnd) and events[-1].saved, events
    assert engine2.text.startswith(engine.text) and engine2.text.endswith("Bye." + family.eos)
