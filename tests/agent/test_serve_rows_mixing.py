"""`hybrid-agent serve`'s batch keeps each request's state its own (agent/serve_batch.py,
agent/serve_rows.py on both paths): more clients than rows, so requests queue and join while other rows
are mid-answer, into rows that finished requests left, some restored from a saved state; each client's
answers are token for token (with each token's log probability and the top alternatives') the ones it
gets alone on a server that decodes one request at a time.

Each turn is a read_file call of a path of its own, already answered; the packaged default model's text
about the file starts with the path it copies, so turns over different paths (of different lengths, so
rows end and are reused at different steps) have different answers: a row that read a neighbour's
token, state, cache or logits answers with the neighbour's words or a garbled mix."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import answered_read, as_history, chat, said, serving

# Two turns per client, each about a file of its own; path lengths differ from client to client.
PATHS = [
    ("main.py", "guide/setup.md"),
    ("src/app.py", "zebra.py"),
    ("notes.txt", "tests/test_io.py"),
    ("Makefile", "lib/util.py"),
    ("README.md", "apple.py"),
    ("config/settings.toml", "gold.py"),
]
ROWS = 3  # fewer rows than clients: requests wait, then join rows that others left
TOP = 5  # top alternatives compared per token: a changed state shows in them even where the pick is sure


def _record(answer: Any) -> dict[str, Any]:
    """What an answer says and every token it chose, with its log probability and the top alternatives'
    (when it was asked with logprobs)."""
    logprobs = answer.choices[0].logprobs
    entries = logprobs.content if logprobs is not None else []
    return {
        "said": said(answer),
        "finish": answer.choices[0].finish_reason,
        "tokens": answer.usage.completion_tokens,
        "cached": answer.usage.prompt_tokens_details.cached_tokens > 0,
        "chosen": [(e.bytes, e.logprob) for e in entries],
        "top": [[(t.bytes, t.logprob) for t in e.top_logprobs] for e in entries],
    }


def _conversation(served: Any, client: int) -> list[dict[str, Any]]:
    """One client's two turns. Clients 0 and 3 ask for logprobs (their rows choose with their own
    samplers); the others do not, so at most steps two or more rows take the batch's one greedy argmax
    for all such rows (agent/serve_batch.py `BatchLoop._choose`)."""
    extra = {"logprobs": True, "top_logprobs": TOP} if client % 3 == 0 else {}
    messages: list[dict[str, Any]] = []
    out = []
    for turn, path in enumerate(PATHS[client]):
        messages.extend(answered_read(path, call_id=f"call_{turn}"))
        answer = chat(served, messages, max_tokens=24, **extra)
        out.append(_record(answer))
        messages.append(as_history(answer.choices[0].message))
    return out


def _same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for key in ("said", "finish", "tokens", "cached"):
        assert got[key] == want[key], f"{where}: {key} {got[key]!r} != {want[key]!r} alone"
    assert [b for b, _ in got["chosen"]] == [b for b, _ in want["chosen"]], where
    assert [p for _, p in got["chosen"]] == pytest.approx([p for _, p in want["chosen"]], abs=1e-3), where
    for mine, theirs in zip(got["top"], want["top"], strict=True):
        assert [b for b, _ in mine] == [b for b, _ in theirs], where
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=1e-3), where


def _until(condition: Any, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


@pytest.fixture(scope="module")
def alone(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> list[list[dict[str, Any]]]:
    """Each client's conversation on a server that runs one request at a time."""
    with serving(engine, str(tmp_path_factory.mktemp("solo") / "solo.db"), max_concurrent=1) as solo:
        assert not solo.app.state.scheduler.batched
        answers = [_conversation(solo, c) for c in range(len(PATHS))]
    # The premise: every answer is different and answers end at different lengths, so a row mixed up
    # with another changes what it says, and rows leave (and are taken over) at different steps.
    assert len({a["said"][0] for conv in answers for a in conv}) == 2 * len(PATHS)
    assert len({conv[0]["tokens"] for conv in answers}) >= 4
    return answers


@pytest.mark.parametrize("path", ["1", "0"])  # the decode engine's slots; the model's own batch
def test_rows_reused_by_queued_and_restored_requests_answer_as_alone(
    engine: Any, alone: list[list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)
    clients = len(PATHS)
    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=ROWS, max_queue=clients) as served:
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda c: _conversation(served, c), range(clients)))
        scheduler = served.app.state.scheduler
        assert scheduler.batch_path == ("engine" if path == "1" else "model")
        steps, rows = served.metric("decode_steps_total"), served.metric("batch_rows_total")
        fed = served.metric("step_prompt_tokens_total")
    # Rows did share steps (most steps ran both rows), and second turns restored their first turn's state
    # and had the rest of their prompt fed by the batch's steps.
    assert scheduler.peak_batch == ROWS and rows > 1.5 * steps
    assert fed > 0
    for c in range(clients):
        for turn, (got, want) in enumerate(zip(together[c], alone[c], strict=True)):
            _same(got, want, f"client {c}, turn {turn}")


# Longer than the engine's slots are built for at first (agent/serve_rows.py `EngineRows`: 512 tokens).
LONG = "Repeat: " + " ".join(f"{w}{i}" for i, w in enumerate(["red", "blue", "cat", "sun"] * 30))


def test_rows_moved_to_larger_slots_by_a_long_joining_prompt_answer_as_alone(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the engine's slots: two rows are decoding when a prompt longer than the slots joins, so the
    buffers are built again larger and the two rows moved over (`EngineRows._fit`); all three answer as
    they do alone. `ignore_eos` keeps the two rows going for a known number of tokens."""
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", "1")
    asks = [("Repeat: alpha beta gamma delta", 40), ("Copy this: 12345 67890", 32), (LONG, 4)]

    def ask(served: Any, content: str, max_tokens: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": content}]
        extra = {"logprobs": True, "top_logprobs": TOP, "extra_body": {"ignore_eos": True}}
        return _record(chat(served, messages, max_tokens=max_tokens, **extra))

    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=3) as served:
        scheduler = served.app.state.scheduler
        assert _until(lambda: served.metric("batch_builds_total") == 1)  # built at start-up
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(ask, served, content, n) for content, n in asks[:2]]
            assert _until(lambda: scheduler.peak_batch == 2)  # both rows decoding
            grown = ask(served, *asks[2])
            together = [*(f.result() for f in running), grown]
        assert scheduler.batch_path == "engine" and served.metric("batch_builds_total") == 2
        assert scheduler.peak_batch == 3  # the two were still decoding when the long prompt joined
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        for (content, n), got in zip(asks, together, strict=True):
            _same(got, ask(solo, content, n), content[:24])
