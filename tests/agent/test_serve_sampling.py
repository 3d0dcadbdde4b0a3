"""`hybrid-agent serve`'s sampling parameters (agent/serve_sampling.py) through the real server and the
official `openai` client, the packaged default model on the CPU: stop strings, top_p, seed, presence and
frequency penalties and logprobs, checked against the same requests without them and against the
model's logits from a plain forward."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import ANSWERED, chat, said, serving, tokens

ASK = ANSWERED  # no tools and the call answered: a text answer, whichever model is packaged
OTHER = [{"role": "user", "content": "Which files are in src?"}]
LONG = {"extra_body": {"ignore_eos": True}}  # every request decodes its max_tokens


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _text(answer: Any) -> str:
    return answer.choices[0].message.content or ""


def _streamed(served: Any, messages: list[dict[str, Any]], **kw: Any) -> tuple[str, str, list[Any]]:
    """A streamed answer: its text, its finish reason and its logprobs entries, from the chunks."""
    text, finish, logprobs = "", "", []
    for c in chat(served, messages, stream=True, **kw):
        if not c.choices:
            continue
        text += c.choices[0].delta.content or ""
        finish = c.choices[0].finish_reason or finish
        if c.choices[0].logprobs is not None:
            logprobs += c.choices[0].logprobs.content or []
    return text, finish, logprobs


@pytest.mark.parametrize("concurrent", [1, 2])  # alone on the engine; in a batch
def test_stop_strings_end_the_text_before_the_first_one(engine: Any, concurrent: int) -> None:
    with serving(engine, None, max_concurrent=concurrent) as served:
        plain = _text(chat(served, ASK, max_tokens=24, **LONG))
        stop = plain[6:9]  # a stop string the answer reaches part-way
        assert len(plain) > 9 and stop.strip(), f"no text to stop in: {plain!r}"
        cut = plain[: plain.find(stop)]
        answer = chat(served, ASK, max_tokens=24, stop=[stop, "never in this text \u2603"], **LONG)
        assert _text(answer) == cut and answer.choices[0].finish_reason == "stop"
        assert answer.usage.completion_tokens < 24
        text, finish, _ = _streamed(served, ASK, max_tokens=24, stop=stop, **LONG)
        assert (text, finish) == (cut, "stop")
        # A stop string never reached holds nothing back for good.
        text, finish, _ = _streamed(served, ASK, max_tokens=24, stop=plain[-2:] + "\u2603", **LONG)
        assert (text, finish) == (plain, "length")


def test_stop_text_holds_back_what_may_become_a_stop_string() -> None:
    from hybrid_agent.agent.serve_sampling import StopText

    s = StopText(("END", "xy"))
    assert [s.push(p) for p in ("hello E", "N", "D and more")] == ["hello ", "", ""]
    assert s.stopped and s.text == "hello "
    s = StopText(("END",))
    assert [s.push(p) for p in ("a E", "Nx", " b")] == ["a ", "ENx", " b"]
    assert s.push("E") == "" and s.finish() == "E" and not s.stopped


def test_tiny_top_p_is_greedy_and_a_seed_repeats_its_sample(engine: Any) -> None:
    def wrote(messages: list[dict[str, Any]], **kw: Any) -> tuple[Any, list[list[int]]]:
        """What an answer says and every token behind it (call markup and text past a stop too)."""
        answer = chat(served, messages, logprobs=True, **kw)
        return said(answer), tokens(answer)

    with serving(engine, None, max_concurrent=2) as served:
        greedy = wrote(ASK, max_tokens=12, temperature=0, **LONG)
        assert len(greedy[1]) == 12
        nucleus = wrote(ASK, max_tokens=12, temperature=1.5, top_p=1e-6, **LONG)
        assert nucleus == greedy
        top_one = wrote(ASK, max_tokens=12, temperature=1.5, extra_body={"ignore_eos": True, "top_k": 1})
        assert top_one == greedy  # vLLM's top_k
        sampled: dict[str, Any] = dict(max_tokens=12, temperature=1.2, **LONG)
        a = wrote(ASK, seed=7, **sampled)
        assert wrote(ASK, seed=7, **sampled) == a
        others = {str(wrote(ASK, seed=s, **sampled)) for s in (1, 2, 3)}
        assert others != {str(a)}  # it does sample
        other_kw = {"seed": 3, "top_p": 0.9, "presence_penalty": 0.5, **sampled}
        b = wrote(OTHER, **other_kw)
        # Both again, at once in one batch: each gets what it got alone.
        with ThreadPoolExecutor(2) as pool:
            together = pool.map(
                lambda kw: wrote(**kw),
                [{"messages": ASK, "seed": 7, **sampled}, {"messages": OTHER, **other_kw}],
            )
            assert list(together) == [a, b]
        assert served.app.state.scheduler.peak_batch == 2


def _prompt_ids(engine: Any) -> list[int]:
    from hybrid_agent.agent.serve_api import Message, render

    return render(engine.chat, engine.tokenizer, [Message(**m) for m in ASK], []).ids


def _logits(engine: Any, ids: list[int]) -> torch.Tensor:
    """The next token's logits in float64 from a plain forward over `ids` from a fresh state."""
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids]), engine.model.new_state())[0, -1]
    return logits[: engine.tokenizer.vocab_size].double()  # (V,)


def _penalized_choice(logits: torch.Tensor, out: list[int], presence: float, frequency: float) -> int:
    """The greedy token under OpenAI's penalties, counted over the completion's tokens so far."""
    counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).double()
    return int((logits - frequency * counts - presence * (counts > 0).double()).argmax())


def _reference(engine: Any, steps: int, presence: float, frequency: float) -> tuple[list[int], list[Any]]:
    """Greedy tokens with OpenAI's penalties applied in float64 to the logits of a plain forward over
    the prompt and the tokens so far, and each step's log_softmax of the logits."""
    ids = _prompt_ids(engine)
    out: list[int] = []
    logps = []
    for _ in range(steps):
        logits = _logits(engine, ids + out)
        logps.append(torch.log_softmax(logits, dim=-1))
        out.append(_penalized_choice(logits, out, presence, frequency))
    return out, logps


def _bytes(engine: Any, token: int) -> list[int]:
    from hybrid_agent.agent.serve_sampling import token_bytes

    return list(token_bytes(engine.tokenizer, token))


@pytest.mark.parametrize("concurrent", [1, 2])
def test_logprobs_are_the_models_and_greedy_takes_the_top_one(engine: Any, concurrent: int) -> None:
    steps = 5
    ref, logps = _reference(engine, steps, 0.0, 0.0)
    with serving(engine, None, max_concurrent=concurrent) as served:
        answer = chat(served, ASK, max_tokens=steps, logprobs=True, top_logprobs=3, **LONG)
        entries = answer.choices[0].logprobs.content
        _, _, streamed = _streamed(served, ASK, max_tokens=steps, logprobs=True, top_logprobs=3, **LONG)
        plain = chat(served, ASK, max_tokens=steps, **LONG)
    assert plain.choices[0].logprobs is None
    assert len(entries) == steps and [e.model_dump() for e in streamed] == [e.model_dump() for e in entries]
    for entry, token, logp in zip(entries, ref, logps, strict=True):
        assert entry.bytes == _bytes(engine, token)
        assert entry.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        top = torch.topk(logp, 3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].bytes == entry.bytes  # greedy: the most likely token
        assert [t.bytes for t in entry.top_logprobs] == [_bytes(engine, int(i)) for i in top.indices]


def _completion_ids(engine: Any, answer: Any) -> list[int]:
    """The token ids of an answer's `logprobs` entries (their bytes name them: each one's must be
    unique in the vocabulary)."""
    owners: dict[tuple[int, ...], list[int]] = {}
    for t in range(engine.tokenizer.vocab_size):
        owners.setdefault(tuple(_bytes(engine, t)), []).append(t)
    named = [owners[tuple(e.bytes)] for e in answer.choices[0].logprobs.content]
    assert all(len(ts) == 1 for ts in named), "a token's bytes name several tokens"
    return [ts[0] for ts in named]


def _step_logits(engine: Any, completion: list[int]) -> torch.Tensor:
    """The float64 logits each token of `completion` was chosen from (len, V), from one plain forward
    over the prompt and the completion from a fresh state."""
    ids = _prompt_ids(engine)
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids + completion[:-1]]), engine.model.new_state())[0]
    return logits[len(ids) - 1 :, : engine.tokenizer.vocab_size].double()


def test_penalties_follow_openais_definition(engine: Any) -> None:
    steps, presence, frequency = 48, 2.0, 1.0
    with serving(engine, None, max_concurrent=2) as served:
        kw: dict[str, Any] = dict(messages=ASK, max_tokens=steps, logprobs=True, **LONG)
        with ThreadPoolExecutor(2) as pool:  # in one batch, each row with its own penalties
            penalized, unpenalized = pool.map(
                lambda extra: chat(served, **kw, **extra),
                [{"presence_penalty": presence, "frequency_penalty": frequency}, {}],
            )
        assert served.app.state.scheduler.peak_batch == 2
    # Each token is the greedy choice under OpenAI's penalties, applied in float64 to the logits of a
    # plain forward, counted over the tokens before it.
    got, free = _completion_ids(engine, penalized), _completion_ids(engine, unpenalized)
    assert len(got) == len(free) == steps
    moved = {"both": 0, "presence": 0, "frequency": 0}  # steps where leaving these out chooses otherwise
    for i, logits in enumerate(_step_logits(engine, got)):
        choice = _penalized_choice(logits, got[:i], presence, frequency)
        assert got[i] == choice, f"token {i}"
        moved["both"] += choice != _penalized_choice(logits, got[:i], 0.0, 0.0)
        moved["presence"] += choice != _penalized_choice(logits, got[:i], 0.0, frequency)
        moved["frequency"] += choice != _penalized_choice(logits, got[:i], presence, 0.0)
    for i, logits in enumerate(_step_logits(engine, free)):
        assert free[i] == int(logits.argmax()), f"unpenalized token {i}"
    # Whichever model is packaged: each penalty changed a choice here, so one left out would show.
    assert all(moved.values()), moved


def test_unsupported_parameters_get_a_400_naming_them(engine: Any) -> None:
    with serving(engine, None) as served:
        for kw, param in [
            ({"n": 2}, "n"),
            ({"logit_bias": {"5": 10}}, "logit_bias"),
            ({"top_logprobs": 2}, "top_logprobs"),
            ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"top_p": 0}, "top_p"),
            ({"presence_penalty": 2.5}, "presence_penalty"),
            ({"response_format": {"type": "json_object"}}, "response_format"),
            ({"extra_body": {"min_p": 0.1}}, "min_p"),
        ]:
            with pytest.raises(openai.BadRequestError) as err:
                chat(served, ASK, max_tokens=2, **kw)
            assert err.value.body["param"] == param, kw
        assert _text(chat(served, ASK, max_tokens=2, logit_bias={}, n=1)) is not None
