"""A model vocabulary padded past its tokenizer's (OLMo pads 100,278 tokens to 100,352): the padding ids
have no text, so no decoding path may ever sample one, greedy or not, eager or on the DecodeEngine."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.model import ByteTokenizer, load_model
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import generate
from hybrid_agent.model.decode.sampling import SamplingParams
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.testing import TINY, tiny_model

TOK = ByteTokenizer()
N = TOK.vocab_size
D = TINY["d_model"]
PROMPT = TOK.encode("hello there")
STEPS = 8
MODES = {"greedy": 0.0, "sampled": 1.0}


def padded_model() -> HybridLM:
    """2 * D padding ids whose lm_head rows are +-1000 e_j: whatever the final hidden state h, the best
    padding logit is 1000 max_j |h_j| >= 1000 rms(h), far above every real id's logit."""
    model = tiny_model(["attention", "mamba2"], vocab_size=N + 2 * D, tie_embeddings=False)
    with torch.no_grad():
        eye = 1000.0 * torch.eye(D)
        model.lm_head.weight[N:] = torch.cat([eye, -eye])
    return model


@pytest.fixture(scope="module")
def model() -> HybridLM:
    m = padded_model()
    with torch.no_grad():  # the premise: unmasked, a padding id wins
        assert int(m(torch.tensor([PROMPT]), m.new_state())[0, -1].argmax()) >= N
    return m


@pytest.mark.parametrize("mode", list(MODES))
def test_eager_generate_never_yields_a_padding_id(model, mode):
    sampling = SamplingParams(temperature=MODES[mode])
    out = generate(
        model, TOK, model.new_state(), PROMPT, max_new_tokens=STEPS, sampling=sampling, seed=0
    ).run()
    assert len(out.token_ids) == STEPS and max(out.token_ids) < N
    assert out.stop_reason == "max_new_tokens"


@pytest.mark.parametrize("greedy_kernel", [True, False])
def test_decode_engine_greedy_never_yields_a_padding_id(model, greedy_kernel):
    engine = DecodeEngine(model, max_context=64, vocab_size=N)
    engine.greedy_kernel = greedy_kernel
    engine.prefill(PROMPT)
    tokens = engine.generate_greedy(STEPS)
    assert len(tokens) == STEPS and max(tokens) < N


@pytest.mark.parametrize("decode_engine", [False, True], ids=["eager", "engine"])
@pytest.mark.parametrize("mode", list(MODES))
def test_agent_engine_never_samples_a_padding_id(model, mode, decode_engine):
    engine = ModelEngine(
        model, TOK, NativeChatFormat(), temperature=MODES[mode], seed=0, decode_engine=decode_engine
    )
    assert engine.uses_decode_engine == decode_engine
    engine.prefill(PROMPT)
    tokens = []
    for _ in range(STEPS):
        tokens.append(engine.next_token())
        engine.prefill(tokens[-1:])
    assert max(tokens) < N
    TOK.decode(tokens)  # every id has text


def test_loading_says_once_when_the_vocabulary_is_padded(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "padded")
    load_model(tmp_path / "padded", progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "never sampled" in line]
    assert notes == [
        f"note: padded has {N + 2 * D} token ids but its tokenizer {N}; ids {N}.. are never sampled"
    ]
    tiny_model(["attention"], vocab_size=N).save_pretrained(tmp_path / "exact")
    load_model(tmp_path / "exact", progress=False)
    assert "never sampled" not in capsys.readouterr().err
