"""The tokenizer is part of the fingerprint a session records: a swapped tokenizer refuses to resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hybrid_agent.agent.cli import main
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.errors import AgentError
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.tokenizer import NATIVE_SPECIAL_TOKENS, ByteTokenizer, Tokenizer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers


def bpe_file(folder: Path, *, lowercase: bool = False) -> Path:
    """A byte-level BPE tokenizer.json with the native special tokens and no merges: 267 tokens, as
    many as the byte tokenizer (so a tiny model of 267 ids accepts it)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if lowercase:
        hf.normalizer = normalizers.Lowercase()
    trainer = trainers.BpeTrainer(
        vocab_size=267,
        special_tokens=list(NATIVE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(["hello world"], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_the_engine_fingerprint_covers_the_tokenizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lm = HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"]))

    def fingerprint(tokenizer: object) -> str:
        return ModelEngine(lm, tokenizer, NativeChatFormat()).fingerprint

    plain = Tokenizer.from_file(bpe_file(tmp_path / "plain"))
    lower = Tokenizer.from_file(bpe_file(tmp_path / "lower", lowercase=True))
    prints = [fingerprint(t) for t in (ByteTokenizer(), plain, lower)]
    assert len(set(prints)) == 3
    assert {p.split(":")[0] for p in prints} == {lm.fingerprint}  # the same model, three tokenizers
    assert fingerprint(Tokenizer.from_file(tmp_path / "plain" / "tokenizer.json")) == prints[1]
    assert all(len(p) <= 128 for p in prints)  # the width of the sessions table's column


@pytest.mark.parametrize(
    ("stored", "error"),
    [
        ("model-a:tokenizer-1", None),
        ("model-a", None),  # recorded before tokenizers were: checked on the model alone
        ("model-a:tokenizer-2", "this model but another tokenizer"),
        ("model-b:tokenizer-1", "another model"),
        ("model-b", "another model"),
    ],
)
def test_resume_checks_model_and_tokenizer(
    make_agent, store, workspace: Path, scripted_engine, stored: str, error: str | None
) -> None:
    sid = store.create_session("", str(workspace), stored).id
    engine = scripted_engine()
    engine.fingerprint = "model-a:tokenizer-1"
    if error is None:
        agent, _ = make_agent(engine=engine, session_id=sid)
        assert agent.session_id == sid
    else:
        with pytest.raises(AgentError, match=error):
            make_agent(engine=engine, session_id=sid)


def test_a_swapped_tokenizer_refuses_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    model = tmp_path / "model"
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        model
    )
    bpe_file(model)
    (tmp_path / "ws").mkdir()
    common = ["--model", str(model), "--db", str(tmp_path / "s.db"), "--workspace", str(tmp_path / "ws"),
              "--max-new-tokens", "2"]  # fmt: skip
    assert main(["run", "hi", *common]) == 0
    sid = capsys.readouterr().out.splitlines()[-1].removeprefix("session: ")
    bpe_file(model, lowercase=True)  # the same weights, another tokenizer.json
    assert main(["run", "again", "--resume", sid, *common]) == 1
    err = capsys.readouterr().err
    assert "another tokenizer" in err and "put back the tokenizer.json" in err
    assert len(err.strip().splitlines()) == 1
