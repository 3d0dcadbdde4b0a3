"""`hybrid-agent serve`'s rendering of a returning conversation (agent/serve_api.py): its long messages
are tokenized once (`CachedEncoder`), and the ids are exactly the tokenizer's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hybrid_agent.model.default as default_model
from hybrid_agent.agent.serve_api import CachedEncoder, Message, render
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.tokenizer import Tokenizer


class Counting:
    """The real tokenizer, counting the texts it tokenizes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        self.calls.append(text)
        return self.tokenizer.encode(text, special=special)


def _tokenizer() -> Tokenizer:
    return Tokenizer.from_file(Path(default_model.__file__).parent / "tokenizer.json")


def _conversation(turns: int) -> list[Message]:
    long = " ".join(f"w{i % 97} <|end|>" if i % 50 == 0 else f"w{i % 97}" for i in range(3000))
    msgs = [Message(role="system", content="Be brief. " * 200), Message(role="user", content=long)]
    for t in range(turns):
        msgs += [
            Message(role="assistant", content=f"answer {t} " * 300),
            Message(role="user", content=f"go {t}"),
        ]
    return msgs


def test_a_returning_conversation_is_tokenized_once_and_renders_the_same_ids() -> None:
    tok, chat = _tokenizer(), NativeChatFormat()
    counting = Counting(tok)
    cached = CachedEncoder(counting)
    for turns in range(4):
        msgs = _conversation(turns)
        counting.calls.clear()
        got = render(chat, cached, msgs, [])
        want = render(chat, tok, msgs, [])
        assert got == want  # ids and boundaries
        long_texts = [c for c in counting.calls if len(c) >= CachedEncoder.MIN_CHARS]
        # Only the newest long message is new (the system and first messages, then each answer).
        assert len(long_texts) == (2 if turns == 0 else 1), long_texts
    # markup (`special=True`) and content of the same text are different entries
    text = "<|end|>" * 400
    assert cached.encode(text, special=True) == tok.encode(text, special=True)
    assert cached.encode(text) == tok.encode(text) != tok.encode(text, special=True)


def test_the_cache_stays_within_its_bytes() -> None:
    tok = _tokenizer()
    cached = CachedEncoder(tok, max_bytes=60_000)
    texts = [f"t{k} " + "x" * (2000 + k) for k in range(40)]
    for text in texts:
        assert cached.encode(text) == tok.encode(text)
        assert cached.used <= 60_000
    assert 0 < len(cached._entries) < len(texts)
    assert cached.encode(texts[-1]) == tok.encode(texts[-1])  # the newest stays
