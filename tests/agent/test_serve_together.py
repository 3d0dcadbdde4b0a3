"""`hybrid-agent serve --join-together` (agent/serve_together.py): requests joining the batch in one
iteration from the same saved state have their prompts prefilled as the rows of one forward, and each
answers token for token (log probabilities and top alternatives within 1e-3) as it does alone."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent.serve_scheduler import Scheduler
from hybrid_agent.agent.serve_together import prefill_rows

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import answered_read, as_history, chat, said, serving

PATHS = [  # two turns a client, each about a file of its own, paths of their own lengths
    ("main.py", "guide/setup.md"),
    ("src/app.py", "zebra.py"),
    ("notes.txt", "tests/test_io.py"),
    ("Makefile", "lib/util.py"),
]
TOP = 3


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def test_rows_prefilled_together_equal_each_prefilled_alone(engine: Any) -> None:
    model = engine.model
    torch.manual_seed(0)
    base = model.new_state()
    with torch.inference_mode():
        model(torch.randint(0, 500, (1, 9)), base)  # a shared prefix
        tails = [[5, 9, 11, 13, 2, 7], [40, 41, 42, 43, 44, 45], [100, 3, 100, 3, 100, 3]]
        got = prefill_rows(model, [base, base, base], tails)
        for tail, mine in zip(tails, got, strict=True):
            alone = base.clone()
            model(torch.tensor([tail]), alone)
            assert mine.n_tokens == alone.n_tokens == 15
            for a, b in zip(mine.layers, alone.layers, strict=True):
                for name in (*a.recurrent, *a.cache):
                    x = a.recurrent.get(name, a.cache.get(name))
                    y = b.recurrent.get(name, b.cache.get(name))
                    assert x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5), name
            # the next token's logits from each state agree as well
            nxt = torch.tensor([[17]])
            assert torch.allclose(model(nxt, mine), model(nxt, alone), rtol=1e-4, atol=1e-4)
    assert base.n_tokens == 9  # the shared state is not advanced
    with pytest.raises(ValueError, match="one length"):
        prefill_rows(model, [base, base], [[1, 2], [3]])


def _gather_first_take(monkeypatch: pytest.MonkeyPatch, clients: int) -> None:
    """The batch loop's first take waits until `clients` requests are queued, so they join in one
    iteration (the timing of the clients' requests would decide otherwise)."""
    take, first = Scheduler.next_jobs, [True]

    def gathered(self: Scheduler, active: int) -> Any:
        if first[0]:
            deadline = time.monotonic() + 20
            while len(self._waiting) < clients and time.monotonic() < deadline:
                time.sleep(0.005)
            first[0] = False
        return take(self, active)

    monkeypatch.setattr(Scheduler, "next_jobs", gathered)


def _record(answer: Any) -> dict[str, Any]:
    entries = answer.choices[0].logprobs.content
    return {
        "said": said(answer),
        "tokens": answer.usage.completion_tokens,
        "chosen": [(e.bytes, e.logprob) for e in entries],
        "top": [[(t.bytes, t.logprob) for t in e.top_logprobs] for e in entries],
    }


def _conversation(served: Any, client: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    out = []
    for turn, path in enumerate(PATHS[client]):
        messages.extend(answered_read(path, call_id=f"call_{turn}"))  # text about the path it copies
        answer = chat(served, messages, max_tokens=12, logprobs=True, top_logprobs=TOP)
        out.append(_record(answer))
        messages.append(as_history(answer.choices[0].message))
    return out


def _same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert (got["said"], got["tokens"]) == (want["said"], want["tokens"]), where
    assert [b for b, _ in got["chosen"]] == [b for b, _ in want["chosen"]], where
    assert [p for _, p in got["chosen"]] == pytest.approx([p for _, p in want["chosen"]], abs=1e-3), where
    for mine, theirs in zip(got["top"], want["top"], strict=True):
        assert [b for b, _ in mine] == [b for b, _ in theirs], where
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=1e-3), where


@pytest.mark.parametrize("path", ["1", "0"])  # the decode engine's slots; the model's own batch
def test_first_turns_joining_at_once_are_prefilled_together_and_answer_as_alone(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    clients = len(PATHS)
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        alone = [_conversation(solo, c) for c in range(clients)]
    assert len({str(a["said"]) for conv in alone for a in conv}) == 2 * clients  # answers differ
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)
    _gather_first_take(monkeypatch, clients)  # the first turns join in one iteration
    options = {"max_concurrent": clients, "max_queue": clients, "join_feed_tokens": 2, "join_together": True}
    with serving(engine, str(tmp_path / "batch.db"), **options) as served:
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda c: _conversation(served, c), range(clients)))
        assert served.app.state.scheduler.batch_path == ("engine" if path == "1" else "model")
        prefilled = served.metric("together_prompt_tokens_total")
        fed = served.metric("step_prompt_tokens_total")
        saves = served.metric("state_saves_total")
    # The first turns' prompts went through one forward (at least all four at their shortest length),
    # second turns' through forwards of their own from their first turn's restored state.
    assert prefilled >= clients * 10
    assert fed <= 2 * 2 * clients  # the steps fed only what the rounds left (at most K=2 a prompt)
    assert saves >= 2 * clients
    for c in range(clients):
        for turn, (got, want) in enumerate(zip(together[c], alone[c], strict=True)):
            _same(got, want, f"client {c}, turn {turn}")


def test_a_group_whose_prefill_fails_fails_its_requests_and_the_server_goes_on(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai
    from hybrid_agent.agent import serve_together

    clients = len(PATHS)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the device is gone")

    _gather_first_take(monkeypatch, clients)
    monkeypatch.setattr(serve_together, "prefill_rows", broken)
    options = {"max_concurrent": clients, "max_queue": clients, "join_feed_tokens": 2, "join_together": True}
    with serving(engine, str(tmp_path / "batch.db"), **options) as served:

        def ask(c: int) -> str:
            try:
                chat(served, [{"role": "user", "content": f"Show me {PATHS[c][0]}"}], max_tokens=4)
            except openai.APIError as exc:
                return str(exc)
            return "answered"

        with ThreadPoolExecutor(clients) as pool:
            got = list(pool.map(ask, range(clients)))
        assert all("the device is gone" in g for g in got), got
        monkeypatch.setattr(serve_together, "prefill_rows", prefill_rows)
        answer = chat(served, [{"role": "user", "content": "Repeat: zebra"}], max_tokens=4)  # alone: no group
        assert answer.choices[0].finish_reason in ("stop", "length")
