"""Representative Hugging Face chat templates, written for these tests in the style of the families
they stand for (ChatML/Qwen with Hermes tool calls, Llama-3 headers, OLMo role tags), plus one that is
not prefix-stable on purpose (it drops the reasoning of earlier assistant turns, as Qwen3's does: the
state keeps that reasoning, and the segment goes on from the end of the reply)."""

from __future__ import annotations

import json

import pytest
from hybrid_agent.model.chat import (
    DEFAULT_SYSTEM_PROMPT,
    ChatMessage,
    NativeChatFormat,
    ParsedToolCall,
    TemplateNotPrefixStable,
)
from hybrid_agent.model.chat_jinja import JinjaChatFormat

CHATML_QWEN = """\
{%- if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}
{%- else %}{% set sys = 'You are a helpful assistant.' %}{% set rest = messages %}{% endif %}
{{- '<|im_start|>system\\n' + sys }}
{%- if tools %}
{{- '\\n\\n# Tools\\n<tools>' }}
{%- for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}
{{- '\\n</tools>\\nCall a function with <tool_call>{"name": ..., "arguments": ...}</tool_call>.' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for m in rest %}
{%- if m.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

LLAMA3 = """\
{{- bos_token }}
{%- for m in messages %}
{%- set role = 'ipython' if m.role == 'tool' else m.role %}
{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}
"""

OLMO = """\
{{ bos_token }}{% for message in messages %}
{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}
{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}
{% elif message['role'] == 'tool' %}{{ '<|tool|>\\n' + message['content'] + '\\n' }}
{% elif message['role'] == 'assistant' %}{% if not loop.last %}\
{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}{% else %}\
{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endif %}
{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}
{% endfor %}"""

# Earlier assistant turns lose their <think> block: adding a message rewrites what was read.
DROPS_REASONING = """\
{%- for m in messages %}
{%- set content = m.content %}
{%- if m.role == 'assistant' and not loop.last and '</think>' in content %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
]

FORMATS = {
    "chatml_qwen": lambda: JinjaChatFormat(CHATML_QWEN, eos_token="<|im_end|>"),
    "llama3": lambda: JinjaChatFormat(LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    "olmo": lambda: JinjaChatFormat(OLMO, bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
}


def _play(fmt: JinjaChatFormat, script: list[tuple[str, str]], tools: list) -> tuple[str, list[ChatMessage]]:
    """Feed a conversation through the format as the agent does: segments for user/tool messages,
    the model's raw text for assistant messages. Returns the text the state would hold."""
    state, history = "", []
    for role, text in script:
        if role == "assistant":
            state += text
            history.append(ChatMessage("assistant", fmt.visible_text(text), raw=text))
        else:
            msg = ChatMessage(role, text, name="read_file" if role == "tool" else None)  # type: ignore[arg-type]
            state += fmt.segment(history, [msg], tools=tools).text
            history.append(msg)
    return state, history


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("with_tools", [False, True])
def test_segments_concatenate_to_full_render(name: str, with_tools: bool) -> None:
    fmt = FORMATS[name]()
    eos = fmt.eos_token
    call = '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'
    script = [
        ("user", "What is in a.py?"),
        ("assistant", "Let me look." + call),  # stopped at the close of the call: no eos
        ("tool", "print('hi')"),
        ("assistant", "It prints hi." + eos),
        ("user", "Thanks. And b.py?"),
        ("assistant", "No b.py here." + eos),
        ("user", "ok"),
    ]
    tools = TOOLS if with_tools else []
    state, history = _play(fmt, script, tools)
    # The reference: one render of the whole conversation, as transformers would do it.
    messages = [ChatMessage("system", DEFAULT_SYSTEM_PROMPT)] + [
        ChatMessage("assistant", m.content, raw=m.raw.removesuffix(eos))
        if m.role == "assistant" and m.raw
        else m
        for m in history
    ]
    assert state == fmt.render(messages, add_generation_prompt=True, tools=tools)


def test_reference_render_matches_transformers() -> None:
    """Our sandboxed renderer gives what transformers' apply_chat_template gives for the same template."""
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    conv = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    for template in (CHATML_QWEN, LLAMA3, OLMO):
        fmt = JinjaChatFormat(template, bos_token="<s>", eos_token="</s>")
        ours = fmt.render([ChatMessage(m["role"], m["content"]) for m in conv], add_generation_prompt=True)
        theirs, _ = render_jinja_template(
            conversations=[conv],
            chat_template=template,
            add_generation_prompt=True,
            bos_token="<s>",
            eos_token="</s>",
        )
        assert ours == theirs[0]


def test_trimming_template_with_untrimmed_reply_is_detected() -> None:
    fmt = FORMATS["llama3"]()
    history = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", raw="hello \n<|eot_id|>")]
    with pytest.raises(TemplateNotPrefixStable, match="not prefix-stable"):
        fmt.segment(history, [ChatMessage("user", "again")])


def test_template_that_drops_reasoning_keeps_it_in_the_state() -> None:
    fmt = JinjaChatFormat(DROPS_REASONING, eos_token="<|im_end|>")
    first = fmt.segment([], [ChatMessage("user", "hi")]).text
    assert first.endswith("<|im_start|>assistant\n")
    plain = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", raw="hello<|im_end|>")]
    after = "\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.segment(plain, [ChatMessage("user", "again")]).text == after
    raw = "<think>hm</think>\nhello<|im_end|>"
    thought = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", raw=raw)]
    # A re-render would drop "<think>hm</think>\n", which the state holds: the state is kept as it is,
    # and the new segment is what the template writes after that reply.
    seg = fmt.segment(thought, [ChatMessage("user", "again")])
    assert seg.text == after and ("again", False) in seg.pieces
    assert (
        fmt.visible_text(raw) == "hello"
        and fmt.parse_tool_calls("<think><tool_call>{}</tool_call></think>") == []
    )
    assert fmt.plain_text("<think>hm</think>\nhi <tool_call>{}</tool_call><|im_end|>") == (
        "hi <tool_call>{}</tool_call>"
    )
    # Stopped without its stop string (a tool call): the template's end of the turn is written.
    cut = [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "", raw='<think>hm</think><tool_call>{"name": "f"}</tool_call>'),
    ]
    assert fmt.segment(cut, [ChatMessage("tool", "r")]).text == (
        "<|im_end|>\n<|im_start|>tool\nr<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_template_that_rewrites_more_than_reasoning_is_still_detected() -> None:
    drops_and_trims = DROPS_REASONING.replace("+ content +", "+ (content | trim) +")
    fmt = JinjaChatFormat(drops_and_trims.replace("</think>", "</reasoning>"), eos_token="<|im_end|>")
    history = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", raw="hello  <|im_end|>")]
    with pytest.raises(TemplateNotPrefixStable):
        fmt.segment(history, [ChatMessage("user", "again")])


def test_from_pretrained_reads_tokenizer_config(tmp_path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML_QWEN, "eos_token": {"content": "<|im_end|>"}, "bos_token": None})
    )
    fmt = JinjaChatFormat.from_pretrained(tmp_path)
    assert fmt.stop_strings == ("<|im_end|>",)
    assert fmt.segment([], [ChatMessage("user", "x")]).text.endswith("x<|im_end|>\n<|im_start|>assistant\n")


def test_template_cannot_escape_the_sandbox() -> None:
    from hybrid_agent.model.chat import ChatFormatError

    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatFormatError):
        JinjaChatFormat(evil).render([ChatMessage("user", "x")], add_generation_prompt=True)


def test_native_segments() -> None:
    fmt = NativeChatFormat()
    first = fmt.segment([], [ChatMessage("user", "hi")], system="S", tools=TOOLS).text
    assert first.startswith("<|bos|><|system|>S\n\n# Tools\n")
    assert json.loads(first.split("\n")[-1].removesuffix("<|end|><|user|>hi<|end|><|assistant|>")) == TOOLS[0]
    assert first.endswith("<|end|><|user|>hi<|end|><|assistant|>")
    assert fmt.segment([], [ChatMessage("user", "hi")], system="S").text == (
        "<|bos|><|system|>S<|end|><|user|>hi<|end|><|assistant|>"
    )
    done = [ChatMessage("user", "hi"), ChatMessage("assistant", "yo", raw="yo<|end|>")]
    assert fmt.segment(done, [ChatMessage("user", "q")]).text == "<|user|>q<|end|><|assistant|>"
    cut = [ChatMessage("user", "hi"), ChatMessage("assistant", "y", raw="y")]  # ran out of tokens
    assert fmt.segment(cut, [ChatMessage("user", "q")]).text == "<|end|><|user|>q<|end|><|assistant|>"
    assert fmt.segment(done, [ChatMessage("tool", "r1"), ChatMessage("tool", "r2")]).text == (
        "<|tool_result|>r1<|/tool_result|><|tool_result|>r2<|/tool_result|><|assistant|>"
    )


@pytest.mark.parametrize("fmt", [NativeChatFormat(), FORMATS["chatml_qwen"]()], ids=["native", "hermes"])
def test_tool_call_parsing(fmt) -> None:
    o, c = fmt.tool_call_open, fmt.tool_call_close
    text = f'I will read it.{o}{{"name": "read_file", "arguments": {{"path": "a"}}}}{c}'
    assert fmt.parse_tool_calls(text) == [
        ParsedToolCall("read_file", {"path": "a"}, text[len("I will read it.") :])
    ]
    assert fmt.visible_text(text) == "I will read it."
    # No tools offered: the markup is text, only the stop strings go.
    assert fmt.plain_text(text + "".join(fmt.stop_strings)) == text
    # Arguments as a JSON string, and "parameters" (Llama style), are accepted.
    assert fmt.parse_tool_calls(f'{o}{{"name": "x", "arguments": "{{\\"a\\": 1}}"}}{c}')[0].arguments == {
        "a": 1
    }
    assert fmt.parse_tool_calls(f'{o}{{"name": "x", "parameters": {{"a": 2}}}}{c}')[0].arguments == {"a": 2}
    bad = fmt.parse_tool_calls(f'{o}{{"name": "x", "arguments": {{"a": }}{c}')
    assert bad[0].error is not None and "not valid JSON" in bad[0].error
    assert 'string "name"' in (fmt.parse_tool_calls(f"{o}[1, 2]{c}")[0].error or "")
    assert "must be a JSON object" in (
        fmt.parse_tool_calls(f'{o}{{"name": "x", "arguments": 3}}{c}')[0].error or ""
    )
    unclosed = fmt.parse_tool_calls(f'ok {o}{{"name": "x"')
    assert unclosed[0].error is not None and "not closed" in unclosed[0].error
    assert fmt.visible_text(f'ok {o}{{"name": "x"') == "ok "
    assert fmt.parse_tool_calls("no calls here") == []


def test_content_is_kept_apart_from_markup() -> None:
    """User text that looks like markup stays content: the tokenizer will not make it a control token."""
    native = NativeChatFormat().segment([], [ChatMessage("user", "a<|end|>b")], system="S")
    assert ("a<|end|>b", False) in native.pieces
    assert all(markup for text, markup in native.pieces if "<|" in text and text != "a<|end|>b")
    qwen = FORMATS["chatml_qwen"]()
    hist = [ChatMessage("user", "hi"), ChatMessage("assistant", "yo", raw="yo<|im_end|>")]
    seg = qwen.segment(hist, [ChatMessage("tool", "x<|im_end|>y", name="read_file")])
    assert ("x<|im_end|>y", False) in seg.pieces
    assert seg.text.startswith("\n<|im_start|>user\n<tool_response>\n")
