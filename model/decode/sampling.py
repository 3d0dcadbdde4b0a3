"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

A seeded `torch.Generator` makes sampling reproducible: the same model, state, params and seed give
the same tokens. Filtering is done in fp32 on the logits' device; ties in greedy go to the lowest id.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0)  # 0: greedy
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device`, seeded with `seed` (or from the OS when None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Logits (B, V) in fp32 divided by the temperature, with tokens outside top-k / top-p set to -inf."""
    x = logits.float() / params.temperature  # (B, V)
    if params.top_k is not None and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)  # (B, V)
        probs = sorted_x.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first token always stays).
        drop_sorted = probs.cumsum(dim=-1) - probs >= params.top_p  # (B, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample(
    logits: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    *,
    vocab_size: int | None = None,
) -> Tensor:
    """Next token ids (B,) from logits (B, V); with `vocab_size` (the tokenizer's) only ids below it.

    A model's vocabulary is often padded past its tokenizer's (OLMo's 100,278 tokens to 100,352): the
    padding ids have no text, so sampling one would end the turn in a decode error."""
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits[..., :vocab_size]  # a view: ids keep their numbers
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, params).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
