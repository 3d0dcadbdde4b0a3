"""How much of the input a turn reads, and how: the prompt-size limit, and the prefill in the
engine's own chunks, cancellable between them and reporting its progress. A mixin of `Agent`
(agent/loop.py), which keeps to the turn itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hybrid_agent.agent.engine import PREFILL_CHUNK, Engine
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.agent.events import PrefillProgress

# The longest segment (a message, or the tool output of one round) a turn reads by default. Reading
# costs time and memory in proportion: a 1 MB message (~470k tokens of the packaged model) ran for 15
# minutes and grew to 7 GB before anything was shown. `max_prompt_tokens` (--max-prompt-tokens) sets it.
DEFAULT_MAX_PROMPT_TOKENS = 32_768
# No tokenizer makes a token of more characters than this from text people send (BPE merges are
# words and runs of spaces): a longer message is refused before the tokenizer spends time on it.
MAX_CHARS_PER_TOKEN = 64


class TurnCancelled(Exception):
    """The user cancelled the running turn (raised between steps; the turn rolls back)."""


class PrefillOps:
    engine: Engine
    max_prompt_tokens: int
    _cancel: threading.Event
    _on_model: Callable[..., Any]

    def _check_characters(self, text: str) -> None:
        """Refuse, before the tokenizer runs, a message that cannot fit `max_prompt_tokens`."""
        if len(text) > self.max_prompt_tokens * MAX_CHARS_PER_TOKEN:
            raise AgentError(
                f"the message is {len(text):,} characters, far over the limit of "
                f"{self.max_prompt_tokens:,} tokens (--max-prompt-tokens): send a shorter one"
            )

    def _check_length(self, n: int, what: str) -> None:
        """Refuse, before any of it is read, a segment over `max_prompt_tokens` (time and memory)."""
        if n > self.max_prompt_tokens:
            raise AgentError(
                f"{what} is {n:,} tokens, over the limit of {self.max_prompt_tokens:,} "
                "(--max-prompt-tokens): send a shorter one, or raise the limit"
            )

    async def _prefill(
        self, ids: list[int], start: int = 0, stop: int | None = None
    ) -> AsyncIterator[PrefillProgress]:
        """Read `ids[start:stop]` in the engine's own chunks (so the numbers are those of one call),
        checking for a cancel in between (a long tool output can take minutes to read on a CPU) and
        reporting progress through `ids` when it has more than one chunk. A segment read in two parts
        (agent/prefix_cache.py) keeps the chunk grid and the progress of one whole read."""
        t0 = time.perf_counter()
        pos, stop = start, len(ids) if stop is None else stop
        while pos < stop:
            if self._cancel.is_set():
                raise TurnCancelled
            end = min(stop, (pos // PREFILL_CHUNK + 1) * PREFILL_CHUNK)
            await self._on_model(self.engine.prefill, ids[pos:end])
            pos = end
            if len(ids) > PREFILL_CHUNK and (pos % PREFILL_CHUNK == 0 or pos == len(ids)):
                took = time.perf_counter() - t0
                yield PrefillProgress(
                    tokens=pos, total=len(ids), tokens_per_s=(pos - start) / max(took, 1e-9)
                )
