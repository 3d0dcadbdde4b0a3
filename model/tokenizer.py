"""Tokenizers: a byte-level one with the native special tokens, and a wrapper of `tokenizers` files.

Design choices:
- `ByteTokenizer`: ids 0..255 are bytes, then `NATIVE_SPECIAL_TOKENS` in that exact order
  (docs/interfaces.md, "Native chat format"). Needs no file, so a fresh model always has one.
- `encode(text)` treats text that merely *looks* like a special token (`"<|end|>"` typed by a user or
  read from a file) as plain text; `encode(text, special=True)` maps those strings to their special
  ids. The chat renderer uses the latter only for the markup it writes itself.
- Streaming: `StreamDecoder` turns ids into text pieces that never split a UTF-8 character; bytes of an
  incomplete character are held until the character completes.
- `digest`: the sha256 of what defines the tokenizer (its tokenizer.json bytes; for the byte tokenizer,
  its special tokens). A session's model fingerprint includes it (`fingerprint_with_tokenizer`): the
  same weights read through another tokenizer see other ids, so a saved state would be misread.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from hybrid_agent.model.errors import TokenizerError
from tokenizers import Tokenizer as _HFTokenizer

NATIVE_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_result|>",
    "<|/tool_result|>",
    "<|end|>",
)

TOKENIZER_FILE = "tokenizer.json"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD. A str may hold them (an undecodable byte of a
    command-line argument or file name, a JSON `"\\ud800"` escape) but UTF-8 cannot encode them, and
    both tokenizers would raise."""
    return text if _LONE_SURROGATE.search(text) is None else _LONE_SURROGATE.sub("\ufffd", text)


class TokenizerLike(Protocol):
    """What `generate` and the chat code need from a tokenizer."""

    vocab_size: int

    def encode(self, text: str, *, special: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...
    def token_id(self, token: str) -> int: ...
    def stream_decoder(self) -> StreamDecoder: ...


class StreamDecoder:
    """Incremental detokenizer: `push(id) -> str` returns only complete characters (maybe "")."""

    def __init__(self, tokenizer: Tokenizer | ByteTokenizer, *, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # ids before this index are already emitted and need no context
        self._read = 0  # ids in [prefix, read) were emitted; kept as left context for the decoder
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if isinstance(self._tok, ByteTokenizer):
            if token_id < 256:
                return self._utf8.decode(bytes([token_id]))
            # A special token: flush any dangling bytes first (they can no longer complete).
            tail = self._utf8.decode(b"", final=True)
            self._utf8.reset()
            return tail + self._tok.decode([token_id], skip_special=self._skip_special)
        # Subword tokenizers: decode a window with left context and emit only the new, complete text
        # (a trailing U+FFFD means a character is still incomplete).
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix : self._read], skip_special=self._skip_special)
        after = self._tok.decode(self._ids[self._prefix :], skip_special=self._skip_special)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        if isinstance(self._tok, ByteTokenizer):
            return self._utf8.decode(b"", final=True)
        before = self._tok.decode(self._ids[self._prefix : self._read], skip_special=self._skip_special)
        after = self._tok.decode(self._ids[self._prefix :], skip_special=self._skip_special)
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then the native special tokens."""

    def __init__(self, special_tokens: Sequence[str] = NATIVE_SPECIAL_TOKENS) -> None:
        self.special_tokens: dict[str, int] = {tok: 256 + i for i, tok in enumerate(special_tokens)}
        self._special_by_id = {i: tok for tok, i in self.special_tokens.items()}
        self.vocab_size = 256 + len(special_tokens)
        # Longest first, so a special that is a prefix of another cannot shadow it.
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in alternatives))
        self.digest = hashlib.sha256(b"byte-tokenizer|" + "|".join(special_tokens).encode()).hexdigest()

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        text = encodable(text)
        if not special:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += text[pos : m.start()].encode("utf-8")
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids += text[pos:].encode("utf-8")
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            if 0 <= i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if i not in self._special_by_id:
                raise TokenizerError(f"token id {i} is not in the byte tokenizer (0..{self.vocab_size - 1})")
            if not skip_special:
                out.append(self._special_by_id[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise TokenizerError(f"{token!r} is not a special token of the byte tokenizer")
        return self.special_tokens[token]

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)


class Tokenizer:
    """A `tokenizers` tokenizer.json (BPE, Unigram, ...)."""

    def __init__(self, hf: _HFTokenizer, *, digest: str | None = None) -> None:
        """`digest`: the sha256 of the file `hf` was read from (`from_file`); else of its JSON."""
        self._hf = hf
        self.digest = digest or hashlib.sha256(hf.to_str().encode()).hexdigest()
        self._lock = threading.Lock()  # encode flips a setting of the shared Rust tokenizer
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.special_tokens: dict[str, int] = {
            t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special
        }

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path}; pass a tokenizer.json or its directory")
        try:
            data = path.read_bytes()
            return cls(_HFTokenizer.from_str(data.decode("utf-8")), digest=hashlib.sha256(data).hexdigest())
        except Exception as e:  # the Rust side raises a bare Exception on a malformed file
            raise TokenizerError(f"cannot read {path} as a tokenizers file: {e}") from e

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        # encode_special_tokens=True makes the library treat special-token strings as plain text.
        with self._lock:
            self._hf.encode_special_tokens = not special
            try:
                return self._hf.encode(encodable(text), add_special_tokens=False).ids
            finally:
                self._hf.encode_special_tokens = False

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int:
        i = self._hf.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{token!r} is not in this tokenizer's vocabulary")
        return i

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(path))
        return path


# Hex digits of the tokenizer digest kept in a fingerprint (128 bits; the whole fits the 128-character
# fingerprint column next to the model's 64).
TOKENIZER_DIGEST_CHARS = 32


def fingerprint_with_tokenizer(model_fingerprint: str, tokenizer: object) -> str:
    """`MODEL:TOKENIZER`, the fingerprint a session records: the model's own (config + weights) and the
    start of its tokenizer's `digest`. A tokenizer without a digest leaves the model's as it is."""
    digest = getattr(tokenizer, "digest", None)
    if not digest:
        return model_fingerprint
    return f"{model_fingerprint}:{digest[:TOKENIZER_DIGEST_CHARS]}"


def load_tokenizer(directory: str | Path | None) -> Tokenizer | ByteTokenizer:
    """The tokenizer.json in `directory` if there is one, else the byte tokenizer."""
    if directory is not None and (Path(directory) / TOKENIZER_FILE).is_file():
        return Tokenizer.from_file(Path(directory) / TOKENIZER_FILE)
    return ByteTokenizer()
