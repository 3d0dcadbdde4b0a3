"""Text helpers of the chat formats (model/chat.py): the JSON a model writes in a tool call, the
jinja2 sandbox that Hugging Face chat templates run in, and reasoning (`<think>...</think>`) blocks.

Reasoning: a model that thinks writes `<think>...</think>` before its answer, or only `...</think>` when
the generation prompt already opened the block (Qwen3 thinking models, Nemotron Nano 2). That text
stays in the state (the model wrote it and reads it on), but it is not the answer: it is not shown,
and tool calls inside it are not run.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is too large a number")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise ValueError(f"a number of {len(text)} digits is too long") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_call_json(body: str) -> tuple[Any, str | None]:
    """`(value, None)` for JSON the model wrote, else `(None, why)`. Strict JSON only: NaN, Infinity
    and numbers too large for a float are refused, so arguments can be stored and shown as JSON.
    Numbers with more digits than Python converts, and nesting deeper than the recursion limit, are
    refused too (`json.loads` raises ValueError and RecursionError for those, not JSONDecodeError)."""
    try:
        return json.loads(body, parse_float=_finite, parse_int=_whole, parse_constant=_no_constant), None
    except json.JSONDecodeError as exc:
        return None, f"the tool call is not valid JSON ({exc.msg} at char {exc.pos})"
    except ValueError as exc:
        return None, f"the tool call is not valid JSON ({exc})"
    except RecursionError:
        return None, "the tool call is not valid JSON (nested too deeply)"


def template_environment() -> Any:
    """jinja2's immutable sandbox with the helpers transformers gives chat templates: `raise_exception`,
    a plain-JSON `tojson`, `strftime_now`, loop controls, and the `{% generation %}` block (it marks
    the assistant's part for training; rendering ignores it)."""
    # Imported here: only checkpoints with a template need jinja2.
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationBlock]
    )

    def raise_exception(message: str) -> None:
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters; templates expect plain json.dumps.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def without_thinking(text: str, opened: bool = False) -> str:
    """`text` with its reasoning removed: every `<think>...</think>` block, a block still open at the
    end, and, when `opened` (the generation prompt opened a block), everything up to the first
    `</think>`. The whitespace that separates reasoning from the answer goes with it. Linear time."""
    out: list[str] = []
    pos = 0
    if opened:
        end = text.find(THINK_CLOSE)
        if end < 0:
            return ""
        pos = end + len(THINK_CLOSE)
        pos = len(text) - len(text[pos:].lstrip())
    while (start := text.find(THINK_OPEN, pos)) >= 0:
        out.append(text[pos:start])
        end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        if end < 0:
            return "".join(out)
        rest = text[end + len(THINK_CLOSE) :]
        pos = len(text) - len(rest.lstrip())
    out.append(text[pos:])
    return "".join(out)
