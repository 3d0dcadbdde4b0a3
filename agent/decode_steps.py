"""Writing tokens on the model's thread, several per trip (agent/loop.py `_decode` runs the message).

Two trips to the model's thread per token (a thread hand-off each way, an event per token) cost a
tenth to a half of the decode speed on a small model (docs/results.md, "Decode through the agent
loop"). So a
trip writes tokens until the message ends (a stop string or a complete tool call, found by the same
scan of the raw text's tail as before), the token limit, a cancel, or `BATCH_S` has passed, and hands
back their text in one piece. The stop is checked after every token, so the state holds exactly
the tokens it held before. Between trips other model work still gets its turn, and the text reaches
the screen at least every `BATCH_S`.

The last token written is fed at the start of the next trip, after its text went out. The first
`SINGLE_TOKENS` tokens of a message are written one per trip, as before: the first token is shown
before the first one-token step runs (on CUDA that step captures its graph: docs/results.md, cold
start), and the first words reach the screen each as it comes; batching only pays once a message
streams on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hybrid_agent.agent.engine import Engine, TextStream

BATCH_S = 0.03  # at most this long between text events while tokens come
SINGLE_TOKENS = 16  # the first tokens of a message: one per trip


@dataclass
class Written:
    text: str  # the text of the tokens written, in order
    n: int  # how many tokens
    last: int  # the last token written, not yet fed
    tail: str  # the raw text's last characters, for the next trip's scan
    stop: str | None  # "end_of_turn" / "tool_call" when the last token ended the message


def write_tokens(
    engine: Engine,
    stream: TextStream,
    tok: int | None,
    tail: str,
    limit: int,
    cancelled: Callable[[], bool],
    single: bool,
    budget_s: float = BATCH_S,
) -> Written:
    """Feed `tok` (when not None), then write up to `limit` (>= 1) tokens, one when `single`; see the
    module doc."""
    chat = engine.chat
    longest = max(len(m) for m in (chat.tool_call_close, *chat.stop_strings))
    pieces: list[str] = []
    stop: str | None = None
    deadline = time.perf_counter() + budget_s
    while True:
        if tok is not None:
            engine.prefill([tok])
        tok = engine.next_token()
        piece = stream.push(tok)
        pieces.append(piece)
        raw = tail + piece
        scan = raw[-(len(piece) + longest) :]
        tail = raw[-longest:]
        if any(s in scan for s in chat.stop_strings):
            stop = "end_of_turn"
            break
        if chat.tool_call_close in scan:
            stop = "tool_call"
            break
        if single or len(pieces) >= limit or cancelled() or time.perf_counter() >= deadline:
            break
    return Written("".join(pieces), len(pieces), tok, tail, stop)
