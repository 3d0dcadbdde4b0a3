"""The byte tokenizer, the tokenizer.json wrapper, and streaming decode."""

from __future__ import annotations

import pytest
from hybrid_agent.model import NATIVE_SPECIAL_TOKENS, ByteTokenizer, Tokenizer, TokenizerError, load_tokenizer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

TEXT = "def héllo():\n    return '🙂 wörld' <|end|> ✓\n"


def test_byte_tokenizer_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 + 11 == 267
    assert [tok.token_id(t) for t in NATIVE_SPECIAL_TOKENS] == list(range(256, 267))
    assert NATIVE_SPECIAL_TOKENS[0] == "<|pad|>" and NATIVE_SPECIAL_TOKENS[-1] == "<|end|>"
    assert tok.encode("aé") == [97, 0xC3, 0xA9]


def test_byte_tokenizer_specials_only_when_asked():
    tok = ByteTokenizer()
    plain = tok.encode(TEXT)
    assert max(plain) < 256 and tok.decode(plain) == TEXT  # user text cannot inject <|end|>
    marked = tok.encode(TEXT, special=True)
    assert tok.token_id("<|end|>") in marked and tok.decode(marked) == TEXT
    assert tok.decode(marked, skip_special=True) == TEXT.replace("<|end|>", "")
    assert tok.encode("<|tool_call|><|/tool_call|>", special=True) == [262, 263]
    with pytest.raises(TokenizerError, match="not a special token"):
        tok.token_id("<|nope|>")
    with pytest.raises(TokenizerError, match="not in the byte tokenizer"):
        tok.decode([300])


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(NATIVE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator([TEXT * 3, "hello world, return values", "wörld 🙂 ✓"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    hf.save(str(path))
    return path


def test_tokenizer_json_round_trip(bpe_file):
    tok = Tokenizer.from_file(bpe_file)
    assert tok.special_tokens["<|end|>"] == tok.token_id("<|end|>")
    assert set(tok.special_tokens) == set(NATIVE_SPECIAL_TOKENS)
    plain = tok.encode(TEXT)
    assert tok.token_id("<|end|>") not in plain and tok.decode(plain) == TEXT
    marked = tok.encode(TEXT, special=True)
    assert tok.token_id("<|end|>") in marked and tok.decode(marked) == TEXT
    assert tok.encode(TEXT) == plain  # the special switch does not stick


def test_tokenizer_stream_decoder(bpe_file):
    tok = Tokenizer.from_file(bpe_file)
    text = "wörld 🙂 ✓ héllo" * 2
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == text


def test_load_tokenizer(bpe_file, tmp_path):
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(load_tokenizer(bpe_file.parent), Tokenizer)
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.from_file(tmp_path)
