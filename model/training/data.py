"""The training corpus written by scripts/make_agent_data.py, and length-bucketed batches of it.

Design choices:
- One episode per row: each row starts from an empty state, so a row is exactly one conversation as
  the agent would see it (system segment first). Rows are grouped by length and padded to a multiple
  of 64 (the SSD chunk), so little compute goes to padding and no episode is ever cut.
- Shared prefix (`shared_prefix=True`): chat episodes are batched without their common system
  segment but its last token, which train.py runs once per batch (model/training/forward.py); plain
  texts go in batches of their own, run whole. The ids, masks and loss are those of the full episodes.
- Loss only on what the model writes at inference: the assistant's tokens, from each `<|assistant|>`
  up to and including the token that ends that stretch (`<|end|>`, `<|eos|>` or `<|/tool_call|>`).
  Plain-text documents (no system segment) are trained on whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hybrid_agent.model.tokenizer import Tokenizer


def assistant_mask(ids: np.ndarray, tok: Tokenizer) -> np.ndarray:
    """bool (T,): True where token t is one the assistant wrote."""
    system, assistant = tok.token_id("<|system|>"), tok.token_id("<|assistant|>")
    stops = {tok.token_id(t) for t in ("<|end|>", "<|eos|>", "<|/tool_call|>")}
    mask = np.zeros(len(ids), dtype=bool)
    if len(ids) < 2 or ids[1] != system:  # plain text: all but the <|bos|>
        mask[1:] = True
        return mask
    special = np.flatnonzero(np.isin(ids, list(tok.special_tokens.values())))
    open_at = -1
    for i in special:
        tid = int(ids[i])
        if tid == assistant:
            open_at = i + 1
        elif open_at >= 0 and tid in stops:
            mask[open_at : i + 1] = True
            open_at = -1
    if open_at >= 0:
        mask[open_at:] = True
    return mask


@dataclass
class Corpus:
    tokens: np.ndarray  # (N,) uint16, episodes without their shared system segment
    starts: np.ndarray  # (E + 1,) offsets
    with_prefix: np.ndarray  # (E,) 1 where the episode starts with `prefix`
    prefix: np.ndarray  # the system segment's ids
    tokenizer: Tokenizer
    manifest: dict
    _masks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> Corpus:
        d = Path(directory)
        return cls(
            np.fromfile(d / "tokens.bin", dtype=np.uint16),
            np.load(d / "docs.npy"),
            np.load(d / "with_prefix.npy"),
            np.load(d / "prefix.npy"),
            Tokenizer.from_file(d / "tokenizer.json"),
            json.loads((d / "manifest.json").read_text()),
        )

    @classmethod
    def concat(cls, parts: list[Corpus]) -> Corpus:
        """Several corpora made with one tokenizer (and so one system segment) as one."""
        first = parts[0]
        for c in parts[1:]:
            same_vocab = c.tokenizer._hf.get_vocab() == first.tokenizer._hf.get_vocab()
            if not same_vocab or not np.array_equal(c.prefix, first.prefix):
                raise ValueError("corpora made with different tokenizers cannot be mixed; pass --tokenizer")
        offsets = np.cumsum([0] + [len(c.tokens) for c in parts[:-1]])
        starts = np.concatenate(
            [parts[0].starts[:1]] + [c.starts[1:] + o for c, o in zip(parts, offsets, strict=True)]
        )
        manifest = {**first.manifest, "parts": [c.manifest for c in parts]}
        return cls(
            np.concatenate([c.tokens for c in parts]),
            starts,
            np.concatenate([c.with_prefix for c in parts]),
            first.prefix,
            first.tokenizer,
            manifest,
        )

    def __len__(self) -> int:
        return len(self.with_prefix)

    def episode(self, i: int) -> np.ndarray:
        body = self.tokens[self.starts[i] : self.starts[i + 1]].astype(np.int64)
        return np.concatenate([self.prefix, body]) if self.with_prefix[i] else body

    def length(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i]) + (len(self.prefix) if self.with_prefix[i] else 0)

    def row_length(self, i: int, shared_prefix: bool) -> int:
        """Tokens of episode i's row in a batch: without the shared system segment but its last token."""
        if shared_prefix and self.with_prefix[i]:
            return int(self.starts[i + 1] - self.starts[i]) + 1
        return self.length(i)

    def mask(self, i: int) -> np.ndarray:
        """`assistant_mask` of episode i (computed once: it is a Python loop over the markup)."""
        m = self._masks.get(i)
        if m is None:
            m = self._masks[i] = assistant_mask(self.episode(i), self.tokenizer)
        return m


def make_batches(
    corpus: Corpus,
    indices: np.ndarray,
    tokens_per_batch: int,
    rng: np.random.Generator,
    *,
    multiple: int = 64,
    shared_prefix: bool = False,
) -> list[np.ndarray]:
    """Episode indices grouped by similar length, at most `tokens_per_batch` padded tokens a batch (rows
    as `collate` lays them out), in random order. With `shared_prefix`, episodes with and without the
    system segment are never in one batch."""
    groups = [indices]
    if shared_prefix:
        has = corpus.with_prefix[indices].astype(bool)
        groups = [indices[has], indices[~has]]
    batches: list[np.ndarray] = []
    for group in groups:
        if not len(group):
            continue
        lengths = np.array([corpus.row_length(int(i), shared_prefix) for i in group])
        order = group[np.argsort(lengths + rng.random(len(lengths)), kind="stable")]
        cur: list[int] = []
        for i in order:
            width = -(-corpus.row_length(int(i), shared_prefix) // multiple) * multiple
            if cur and width * (len(cur) + 1) > tokens_per_batch:
                batches.append(np.array(cur))
                cur = []
            cur.append(int(i))
        if cur:
            batches.append(np.array(cur))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def collate(
    corpus: Corpus, batch: np.ndarray, *, multiple: int = 64, shared_prefix: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ids, target_mask, prefix): ids (B, T) right-padded with <|pad|>; target_mask[b, t] says whether
    the token at t + 1 carries loss (the last column is always False). With `shared_prefix` and a
    batch of chat episodes, rows start at the system segment's last token and `prefix` holds the
    tokens before it (run once, see model/training/forward.py); else `prefix` is None."""
    split = shared_prefix and bool(corpus.with_prefix[batch].all())
    skip = len(corpus.prefix) - 1 if split else 0
    rows = [(corpus.episode(int(i))[skip:], corpus.mask(int(i))[skip:]) for i in batch]
    width = -(-max(len(e) for e, _ in rows) // multiple) * multiple
    pad = corpus.tokenizer.token_id("<|pad|>")
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    tmask = np.zeros((len(rows), width), dtype=bool)
    for r, (e, m) in enumerate(rows):
        ids[r, : len(e)] = e
        tmask[r, : len(e) - 1] = m[1:]
    return ids, tmask, (corpus.prefix[:skip].astype(np.int64) if split else None)
