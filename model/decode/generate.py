"""Prefill and streaming decode on an explicit `ModelState`.

Design choices:
- `generate` returns a `Generation`: iterate it for one `Step` per sampled token (its id and the new
  visible text, which may be ""), then read `stop_reason`, `token_ids`, `text` and `raw_text`.
- The state always contains every token yielded so far: a token is fed to the model before it is
  yielded, so a consumer that stops iterating (a cancelled turn) leaves a consistent state. The token
  that ends generation (a stop token, the token completing a stop string, the last of
  `max_new_tokens`) is fed too: the state matches the transcript `raw_text`, which the next prefill
  continues from.
- Visible text never splits a UTF-8 character and never shows a stop string or a stop token; text that
  could be the start of a stop string is held back until it cannot be.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from hybrid_agent.model.decode.sampling import SamplingParams, make_generator, sample
from hybrid_agent.model.errors import TokenRangeError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import ModelState
from hybrid_agent.model.tokenizer import TokenizerLike
from torch import Tensor

StopReason = Literal["stop_token", "stop_string", "max_new_tokens"]


@torch.inference_mode()
def prefill(
    model: HybridLM, ids: Sequence[int] | Tensor, state: ModelState, *, chunk_size: int | None = 2048
) -> Tensor:
    """Feed `ids` (T,) or (1, T) into `state`; returns the logits of the last token (1, V).

    `chunk_size` bounds the activation memory of long prompts (the attention mask alone is T x L);
    the logits are the same either way. None: one call.
    """
    x = torch.as_tensor(ids, dtype=torch.long, device=model.device)
    x = x.view(1, -1) if x.dim() == 1 else x  # (1, T)
    if x.shape[-1] == 0:
        raise TokenRangeError("the prompt is empty; pass at least one token to prefill")
    step = chunk_size or x.shape[1]
    logits = x.new_empty(0)
    for start in range(0, x.shape[1], step):
        logits = model(x[:, start : start + step], state)  # (1, t, V)
    return logits[:, -1]  # (1, V)


@dataclass(frozen=True)
class Step:
    token_id: int
    text: str  # newly visible text (maybe "": an incomplete character, or held back for a stop string)


class Generation:
    """A streaming generation: iterate for `Step`s; afterwards `stop_reason` says why it ended."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self._steps: Iterator[Step] = iter(())
        self.token_ids: list[int] = []  # every token sampled, all of them fed into the state
        self.text = ""  # the visible text so far
        self.stop_reason: StopReason | None = None

    @property
    def raw_text(self) -> str:
        """Every sampled token decoded, stop token and stop string included: what the state has read."""
        return self._tokenizer.decode(self.token_ids)

    def __iter__(self) -> Iterator[Step]:
        return self._steps

    def run(self) -> Generation:
        """Consume every step; returns self."""
        for _ in self:
            pass
        return self


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that begins some stop string (and is shorter than it)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def generate(
    model: HybridLM,
    tokenizer: TokenizerLike,
    state: ModelState,
    prompt: Sequence[int] | Tensor,
    *,
    max_new_tokens: int = 256,
    sampling: SamplingParams | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    prefill_chunk_size: int | None = 2048,
) -> Generation:
    """Prefill `prompt` (the new tokens only) into `state`, then sample up to `max_new_tokens`.

    Pass `seed` (or your own `generator`, on the model's device) for reproducible sampling. Only ids
    the tokenizer has are sampled (a padded model vocabulary has more).
    """
    if state.batch_size != 1:
        raise TokenRangeError(f"generate decodes one sequence; the state has batch {state.batch_size}")
    params = sampling or SamplingParams()
    gen = generator if generator is not None or params.greedy else make_generator(seed, model.device)
    stops = tuple(s for s in stop_strings if s)
    stop_ids = set(stop_token_ids)
    result = Generation(tokenizer)

    def steps() -> Iterator[Step]:
        logits = prefill(model, prompt, state, chunk_size=prefill_chunk_size)  # (1, V)
        if max_new_tokens <= 0:
            result.stop_reason = "max_new_tokens"
            return
        decoder = tokenizer.stream_decoder()
        buf = ""  # visible text, including what is still held back
        emitted = 0  # buf[:emitted] has been yielded
        for i in range(max_new_tokens):
            token = int(sample(logits, params, gen, vocab_size=tokenizer.vocab_size)[0])
            logits = model(torch.tensor([[token]], device=model.device), state)[:, -1]  # (1, V)
            result.token_ids.append(token)
            if token in stop_ids:
                result.stop_reason = "stop_token"
                buf += decoder.flush()  # an incomplete character can no longer complete
            else:
                buf += decoder.push(token)
                hits = [j for j in (buf.find(s, emitted) for s in stops) if j >= 0]
                if hits:
                    buf = buf[: min(hits)]
                    result.stop_reason = "stop_string"
                elif i == max_new_tokens - 1:
                    result.stop_reason = "max_new_tokens"
                    buf += decoder.flush()
            end = len(buf) if result.stop_reason else len(buf) - _held_suffix(buf, stops)
            text, emitted = buf[emitted:end], max(emitted, end)
            result.text += text
            yield Step(token, text)
            if result.stop_reason is not None:
                return

    result._steps = steps()
    return result
