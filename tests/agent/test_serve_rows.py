"""`hybrid-agent serve`'s batch on the decode engine's per-row slots (agent/serve_rows.py `EngineRows`,
model/decode/rows.py), the packaged default model on the CPU where the step runs uncaptured: concurrent
clients get exactly the answers they get one at a time, through the real server and `openai` client."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_testkit import as_history, chat, serving


@pytest.fixture(scope="module")
def engine() -> Any:
    from hybrid_agent.agent.factory import load_engine

    return load_engine(None)


def _conversation(served: Any, client: int, turns: int, max_tokens: int) -> list[Any]:
    messages: list[dict[str, Any]] = []
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me about item {client * 7 + turn}, please."})
        message = chat(served, messages, max_tokens=max_tokens + client).choices[0].message  # rows end apart
        out.append(
            (message.content, [(c.function.name, c.function.arguments) for c in message.tool_calls or ()])
        )
        messages.append(as_history(message))
    return out


@pytest.mark.parametrize("path", ["1", "0"])
def test_batched_answers_equal_solo_ones(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         path: str) -> None:  # fmt: skip
    monkeypatch.setenv("HYBRID_AGENT_BATCH_ENGINE", path)  # the engine's slots, or the model's own batch
    clients, turns, max_tokens = 3, 1, 3
    with serving(engine, str(tmp_path / "solo.db"), max_concurrent=1) as solo:
        alone = [_conversation(solo, c, turns, max_tokens) for c in range(clients)]
    with serving(engine, str(tmp_path / "batch.db"), max_concurrent=clients, max_queue=clients) as served:
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda c: _conversation(served, c, turns, max_tokens), range(clients)))
        scheduler = served.app.state.scheduler
        assert scheduler.batched and scheduler.peak_batch > 1
        assert scheduler.batch_path == ("engine" if path == "1" else "model")
    assert together == alone
