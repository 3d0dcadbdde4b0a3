"""How one `hybrid-agent serve` request chooses its tokens, as the OpenAI API and vLLM define its
parameters: temperature, top_p (and vLLM's top_k), presence and frequency penalties, seed, logprobs with
top_logprobs, and stop strings.

Design choices:
- Every request has its own `RowSampler` (its parameters, its random generator, the counts of the tokens
  it has generated), so rows with different parameters decode in one batch (agent/serve_batch.py) and
  each gets what it would get alone: the same logits through the same per-row operations.
- Penalties are OpenAI's: `logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)`,
  counted over the tokens of this completion (forced tool-call markup included), applied before the
  temperature, also when decoding greedily.
- `seed`: the row's generator starts from it, so the same request with the same seed samples the same
  tokens wherever it runs in a batch. Without a seed the engine's generator is used (its `--seed`).
- Logprobs are the model's own distribution (log_softmax of the raw logits over the tokenizer's ids),
  as vLLM reports them by default, not the one after temperature and penalties.
- Stop strings apply to the text the client sees: `StopText` holds back a tail that may still become a
  stop string, and cuts the text before the first one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Sampling:
    """A request's sampling parameters (validated by agent/serve_api.py)."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()

    @property
    def plain_greedy(self) -> bool:
        """Greedy on the raw logits with nothing recorded: one batched argmax serves every such row."""
        return (
            self.temperature == 0.0
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logprobs
        )


def penalize(logits: Tensor, counts: dict[int, int], presence: float, frequency: float) -> Tensor:
    """OpenAI's presence and frequency penalties on logits (V,), in fp32, given how many times each
    token was generated so far."""
    x = logits.float().clone()
    ids = [t for t in counts if 0 <= t < x.shape[0]]
    if ids:
        n = torch.tensor([counts[t] for t in ids], dtype=torch.float32, device=x.device)
        x[torch.tensor(ids, device=x.device)] -= frequency * n + presence
    return x


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """The bytes a token stands for (a byte tokenizer's single byte; else its decoded text)."""
    from hybrid_agent.model.tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer) and 0 <= token < 256:
        return bytes([token])
    return str(tokenizer.decode([token])).encode("utf-8")


def _entry(tokenizer: Any, token: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(tokenizer, token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


@dataclass
class RowSampler:
    """One request's token choice (see the module doc). `choose` takes the row's logits (V,) or (1, V)."""

    params: Sampling
    tokenizer: Any
    vocab_size: int | None
    generator: torch.Generator | None
    counts: dict[int, int] = field(default_factory=dict)  # generated tokens, by id
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's `logprobs.content` entries

    @classmethod
    def make(cls, params: Sampling, engine: Any) -> RowSampler:
        from hybrid_agent.model.decode.sampling import make_generator

        device = getattr(engine, "_device", torch.device("cpu"))
        if params.seed is not None:
            generator: torch.Generator | None = make_generator(params.seed, device)
        else:
            generator = getattr(engine, "_generator", None)
        return cls(params, engine.tokenizer, getattr(engine, "_vocab_size", None), generator)

    def seen(self, token: int) -> None:
        """A token of the completion (sampled or forced): it counts for the penalties."""
        self.counts[token] = self.counts.get(token, 0) + 1

    def choose(self, logits: Tensor) -> int:
        from hybrid_agent.model.decode.sampling import SamplingParams, sample

        row = logits.reshape(-1)
        if self.vocab_size is not None and self.vocab_size < row.shape[0]:
            row = row[: self.vocab_size]
        p = self.params
        x = row
        if p.presence_penalty or p.frequency_penalty:
            x = penalize(row, self.counts, p.presence_penalty, p.frequency_penalty)
        params = SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
        token = int(sample(x[None], params, self.generator)[0])
        if p.logprobs:
            self._record(row, token)
        return token

    def _record(self, row: Tensor, token: int) -> None:
        logp = torch.log_softmax(row.double(), dim=-1)
        entry = _entry(self.tokenizer, token, float(logp[token]))
        top: list[dict[str, Any]] = []
        if self.params.top_logprobs:
            values, ids = torch.topk(logp, min(self.params.top_logprobs, logp.shape[0]))
            top = [_entry(self.tokenizer, int(i), float(v)) for v, i in zip(values, ids, strict=True)]
        entry["top_logprobs"] = top
        self.logprobs.append(entry)


class StopText:
    """The visible text of an answer with the request's stop strings applied (see the module doc)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # everything visible so far (cut at a stop string once found)
        self.sent = 0  # how much of it was handed out
        self.stopped = False

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def push(self, delta: str) -> str:
        """Add visible text; return what may be shown now. Sets `stopped` at a stop string."""
        if self.stopped or not delta:
            return ""
        if not self.stops:
            self.text += delta
            self.sent = len(self.text)
            return delta
        longest = max(len(s) for s in self.stops)
        start = max(0, len(self.text) - longest + 1)
        self.text += delta
        hits = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            end = len(self.text)
        else:
            end = len(self.text) - self._held()
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> str:
        """The held-back tail, once the answer is over without reaching a stop string."""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out

    def cut(self, text: str) -> str:
        """`text` (the whole visible answer) cut before its first stop string."""
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        return text[: min(hits)] if hits else text
