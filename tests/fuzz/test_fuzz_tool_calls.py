"""Fuzzing the tool-call parsers (model/chat.py, model/checkpoints/tool_formats.py).

The contract (docs/interfaces.md, "Native chat format"): `parse_tool_calls(text)` returns a list of
`ParsedToolCall`; a malformed call comes back with `error` set, for the model to read and correct.
Whatever the model wrote, parsing never raises, runs in time linear in the text, and a call without
an error names a tool and carries a JSON object of arguments (they are shown and stored as JSON).
"""

from __future__ import annotations

import json
import time
from keyword import iskeyword

import pytest
from hybrid_agent.model.chat import NativeChatFormat, ParsedToolCall
from hybrid_agent.model.chat_jinja import JinjaChatFormat
from hybrid_agent.model.checkpoints.tool_formats import NemotronToolCalls, PythonicToolCalls
from hypothesis import example, given
from hypothesis import strategies as st

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

FORMATS = {
    "native": NativeChatFormat,
    "hermes": lambda: JinjaChatFormat(TEMPLATE, eos_token="<|im_end|>"),
    "nemotron": lambda: NemotronToolCalls(TEMPLATE),
    "pythonic": lambda: PythonicToolCalls(TEMPLATE),
}

# Any code point, lone surrogates and NUL included.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
JUNK = st.text(ANY_CHAR, max_size=12)

# Pieces a model might write around and inside a call: every format's markers, JSON and Python
# fragments, and a few values the parsers must refuse rather than pass on (not JSON, too large,
# nested too deeply for the recursion limit).
FRAGMENTS = [
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|end|>",
    "<|eos|>",
    "<tool_call>",
    "</tool_call>",
    "<TOOLCALL>",
    "</TOOLCALL>",
    "<function_calls>",
    "</function_calls>",
    "<|im_end|>",
    '{"name": "read_file", "arguments": ',
    '{"name": "f", "parameters": ',
    '"{\\"a\\": 1}"',
    '{"path": "a.py"}',
    "[",
    "]",
    "{",
    "}",
    ",",
    '"',
    "\n",
    "read_file(path='a.py')",
    "f(x=",
    ")",
    "NaN",
    "-Infinity",
    "1e999",
    "1" * 5000,
    "0x" + "f" * 5000,
    "[" * 3000,
    "-" * 3000,
    "1+" * 3000,
    "1j",
    "b'x'",
    "{1, 2}",
    "set()",
    "...",
    "{1: 2}",
    "\0",
    "\ud800",
]
MARKER_TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), JUNK), max_size=24).map("".join)


def check_calls(fmt, text: str) -> list[ParsedToolCall]:
    calls = fmt.parse_tool_calls(text)
    assert isinstance(calls, list)
    for call in calls:
        assert isinstance(call, ParsedToolCall)
        assert call.raw and call.raw in text
        if call.error is None:
            assert isinstance(call.name, str)
            assert isinstance(call.arguments, dict)
            # Strict JSON, as the events are stored and shown: the arguments survive it unchanged.
            assert json.loads(json.dumps(call.arguments, allow_nan=False)) == call.arguments
        else:
            assert isinstance(call.error, str) and call.error
            assert call.name is None or isinstance(call.name, str)
    assert isinstance(fmt.visible_text(text), str)
    return calls


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_arbitrary_text_never_raises(name: str, budget) -> None:
    fmt = FORMATS[name]()

    @budget
    @given(st.text(ANY_CHAR, max_size=400))
    def prop(text: str) -> None:
        check_calls(fmt, text)

    prop()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_markers_with_junk_between_never_raise(name: str, budget) -> None:
    fmt = FORMATS[name]()
    o, c = fmt.tool_call_open, fmt.tool_call_close

    # Values json.loads turns into ValueError (a number longer than Python converts) or RecursionError.
    @example(f'{o}{{"name": "f", "arguments": {{"n": {"1" * 5000}}}}}{c}')
    @example(f"{o}{'[' * 100_000}{c}")
    @example(f'{o}{{"name": "f", "arguments": "{"[" * 100_000}"}}{c}')
    # JSON has no NaN or Infinity: a stored event holding one is not JSON (PostgreSQL refuses it).
    @example(f'{o}{{"name": "f", "arguments": {{"x": NaN, "y": 1e999}}}}{c}')
    # Python-call syntax: a lone surrogate and deep unary chains (ast.parse raises UnicodeEncodeError,
    # MemoryError, RecursionError), and literals that are not JSON values.
    @example(f"{o}f(x='\ud800'){c}")
    @example(f"{o}f(x={'-' * 100_000}1){c}")
    @example(f"{o}f(x={'1+' * 100_000}1){c}")
    @example(f"{o}f(a=1j, b=b'x', c={{1, 2}}, d=..., e={{1: 2}}, f=0x{'f' * 5000}, g=1e999){c}")
    @budget
    @given(MARKER_TEXT)
    def prop(text: str) -> None:
        check_calls(fmt, text)

    prop()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_well_formed_calls_round_trip(name: str, budget) -> None:
    """Calls written in the format's own syntax, with any JSON arguments, come back exactly."""
    fmt = FORMATS[name]()
    o, c = fmt.tool_call_open, fmt.tool_call_close
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    leaf |= st.text(max_size=8)
    values = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: not iskeyword(s))

    @budget
    @given(
        st.text(max_size=20).filter(lambda s: o not in s),
        identifier,
        st.dictionaries(identifier, values, max_size=4),
    )
    def prop(before: str, tool: str, arguments: dict) -> None:
        if name == "pythonic":
            body = (
                tool
                + "("
                + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
                + ")"
            )
        elif name == "nemotron":
            body = json.dumps([{"name": tool, "arguments": arguments}])
        else:
            body = json.dumps({"name": tool, "arguments": arguments})
        calls = check_calls(fmt, before + o + body + c)
        assert [(call.name, call.arguments, call.error) for call in calls] == [(tool, arguments, None)]

    prop()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_parsing_time_is_linear_in_repeated_open_markers(name: str) -> None:
    """A degenerate output that repeats the open marker: the old `open(.*?)close` regex rescanned to
    the end for each of them (about 10 s for 10,000 here); a scan is milliseconds."""
    fmt = FORMATS[name]()
    text = fmt.tool_call_open * 10_000
    start = time.perf_counter()
    calls = fmt.parse_tool_calls(text)
    assert time.perf_counter() - start < 1.0
    assert len(calls) == 1 and "not closed" in (calls[0].error or "")
