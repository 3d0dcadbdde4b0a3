"""Sampling (greedy, temperature, top-k, top-p) and the streaming `generate`."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import ByteTokenizer, SamplingParams, generate, prefill, sample
from hybrid_agent.model.decode.sampling import filter_logits, make_generator

MIXED = ["mamba2", "attention", "gated_deltanet"]
PROMPT = ByteTokenizer().encode("<|user|>hi<|end|><|assistant|>", special=True)


def test_greedy_is_argmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, SamplingParams()), logits.argmax(-1))
    assert torch.equal(
        sample(logits, SamplingParams(temperature=2.0, top_k=1), make_generator(0)), logits.argmax(-1)
    )


def reference_top_p(logits: torch.Tensor, p: float) -> set[int]:
    """The smallest set of most likely tokens whose probability reaches p (float64, one row)."""
    probs = logits.double().softmax(-1)
    kept, total = set(), 0.0
    for i in probs.argsort(descending=True).tolist():
        kept.add(i)
        total += float(probs[i])
        if total >= p:
            break
    return kept


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_nucleus(p):
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(1)) * 3
    x = filter_logits(logits, SamplingParams(temperature=1.0, top_p=p))
    for row in range(3):
        assert set(torch.isfinite(x[row]).nonzero().squeeze(1).tolist()) == reference_top_p(logits[row], p)


def test_top_k_and_temperature():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    x = filter_logits(logits, SamplingParams(temperature=0.5, top_k=5))
    assert (torch.isfinite(x).sum(-1) == 5).all()
    top = logits.topk(5).indices
    assert torch.equal(x.gather(-1, top), logits.gather(-1, top) / 0.5)


def test_sampled_frequencies_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    params = SamplingParams(temperature=0.7)
    draws = sample(logits.expand(40000, -1), params, make_generator(3))
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    assert torch.allclose(freq, (logits[0].double() / 0.7).softmax(-1), atol=0.01)


def run(model, seed, **kw):
    state = model.new_state()
    g = generate(model, ByteTokenizer(), state, PROMPT, seed=seed, **kw).run()
    return g, state


def test_seeded_generation_is_reproducible(make_model):
    model = make_model(MIXED)
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95)
    a, _ = run(model, 7, sampling=params, max_new_tokens=20)
    b, _ = run(model, 7, sampling=params, max_new_tokens=20)
    c, _ = run(model, 8, sampling=params, max_new_tokens=20)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 20
    assert a.token_ids != c.token_ids
    assert a.stop_reason == "max_new_tokens"


def test_state_has_read_every_token(make_model):
    model = make_model(MIXED)
    g, state = run(model, 0, sampling=SamplingParams(temperature=1.0), max_new_tokens=12)
    assert state.n_tokens == len(PROMPT) + 12
    fresh = model.new_state()
    expected = prefill(model, PROMPT + g.token_ids, fresh)
    after = model(torch.tensor([[5]]), state)[:, -1]
    assert torch.allclose(after, model(torch.tensor([[5]]), fresh)[:, -1], rtol=1e-4, atol=1e-5)
    assert expected.shape == (1, model.config.vocab_size)


def test_stop_token(make_model):
    model = make_model(MIXED)
    full, _ = run(model, None, max_new_tokens=30)  # greedy
    stop = full.token_ids[9]
    first = full.token_ids.index(stop)
    g, state = run(model, None, max_new_tokens=30, stop_token_ids=[stop])
    assert g.stop_reason == "stop_token"
    assert g.token_ids == full.token_ids[: first + 1]
    assert state.n_tokens == len(PROMPT) + first + 1
    assert g.raw_text == ByteTokenizer().decode(g.token_ids)


def test_stop_string_is_never_shown(make_model):
    model = make_model(MIXED)
    tok = ByteTokenizer()
    full, _ = run(model, None, max_new_tokens=40)
    text = full.text
    stop = text[12:15]
    cut = text.find(stop)
    state = model.new_state()
    g = generate(model, tok, state, PROMPT, max_new_tokens=40, stop_strings=[stop, "never appears"])
    pieces = [s.text for s in g]
    assert g.stop_reason == "stop_string"
    assert "".join(pieces) == g.text == text[:cut]
    assert g.token_ids == full.token_ids[: len(g.token_ids)]
    assert stop in g.raw_text


def test_streamed_text_never_splits_a_character():
    tok = ByteTokenizer()
    text = "héllo 🙂 wörld ✓ done"
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(text)]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1] == "" and pieces[2] == "é"  # held until the second byte of é arrives


def test_empty_prompt_is_refused(make_model):
    model = make_model(["mamba2"])
    from hybrid_agent.model import TokenRangeError

    with pytest.raises(TokenRangeError, match="empty"):
        generate(model, ByteTokenizer(), model.new_state(), [], max_new_tokens=3).run()


def test_prefill_in_chunks_gives_the_same_logits(make_model):
    model = make_model(MIXED)
    ids = list(range(40, 83))
    a, b = model.new_state(), model.new_state()
    one, chunked = prefill(model, ids, a, chunk_size=None), prefill(model, ids, b, chunk_size=5)
    assert a.n_tokens == b.n_tokens == len(ids)
    assert float((one - chunked).abs().max() / one.abs().max()) < 1e-4


def test_stopping_early_leaves_a_consistent_state(make_model):
    model = make_model(MIXED)
    state = model.new_state()
    gen = generate(model, ByteTokenizer(), state, PROMPT, max_new_tokens=50)
    taken = [step.token_id for _, step in zip(range(3), gen, strict=False)]
    assert len(taken) == 3 and state.n_tokens == len(PROMPT) + 3  # a cancelled turn: no token half-read
    fresh = model.new_state()
    prefill(model, PROMPT + taken, fresh)
    probe = torch.tensor([[7]])
    assert torch.allclose(model(probe, state), model(probe, fresh), rtol=1e-4, atol=1e-5)
