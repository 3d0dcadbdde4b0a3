"""The focus episodes of scripts/agent_focus.py: docs questions, multi-step edits and recall."""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_focus  # noqa: E402
import agent_shapes  # noqa: E402
import make_agent_data as gen  # noqa: E402
from episode_kit import replay  # noqa: E402

MIX = {"wide": 0.5, "voices": 0.7, "projects": 0.5, "shapes": 1.0}


def _tasks(make: Any, n: int, tmp_path: Path) -> Iterator[tuple[agent_shapes.Workspace, agent_shapes.Task]]:
    """`n` seeded shaped workspaces, each with one task `make(rng, ws)` gives."""
    for i in range(n):
        rng = random.Random(f"{make.__name__}:{i}")
        ws = agent_shapes.make_shaped_workspace(rng, tmp_path / f"w{i}")
        yield ws, make(rng, ws)


def test_docs_questions_never_edit_and_answer_with_the_value_the_tools_showed(tmp_path: Path) -> None:
    wrong_page_first = 0
    for ws, task in _tasks(agent_focus.docs, 30, tmp_path):
        tools = [name for name, _ in task.calls]
        assert not {"edit_file", "write_file"} & set(tools), task.calls
        results = replay(ws, task)
        rel, x = max(((r, x) for r, _, x in ws.docs if x in task.answer), key=lambda d: len(d[1]))
        line = next(t for t in ws.files[rel].splitlines() if x in t)  # the answer quotes the line
        assert line in task.answer and line in results[-1]
        assert x in results[-1] and x in task.answer and task.check(ws.root, task.answer)
        assert len(task.calls) <= 3
        reads = [a["path"] for n, a in task.calls if n == "read_file"]
        if len(reads) == 2:  # the first page read does not hold the fact, the second does
            wrong_page_first += 1
            assert reads[1] == rel and line not in results[1]
    assert wrong_page_first >= 3


def test_multi_step_edits_after_at_least_one_lookup_and_copies_the_new_value(tmp_path: Path) -> None:
    three = 0
    for ws, task in _tasks(agent_focus.multi, 20, tmp_path):
        assert len(task.calls) >= 2 and task.calls[0][0] == "grep" and task.calls[-1][0] == "edit_file"
        three += len(task.calls) == 3
        new_value = str(task.calls[-1][1]["new_string"]).split(" = ", 1)[1].strip("'\"")
        assert new_value in task.prompt
        replay(ws, task)
        assert task.check(ws.root, task.answer)
    assert 0 < three < 20


def test_recall_questions_come_after_other_turns_and_are_answered_without_tools() -> None:
    seen = 0
    for i in range(40):
        ep = gen.make_episode(7, i, **MIX)
        if "f_recall" not in ep.kinds:
            continue
        seen += 1
        text = ep.text()
        turns = text.split("<|user|>")[1:]
        # the last turn is a question about a told fact: no tool call, its value said earlier
        last = turns[-1]
        assert "<|tool_call|>" not in last
        answer = last.split("<|assistant|>", 1)[1].removesuffix("<|end|>")
        value = answer.removeprefix("You said ").split(" is ", 1)[-1].rstrip(".")
        question = last.split("<|assistant|>", 1)[0]
        assert value and value not in question and value in "".join(turns[:-1]), (answer, turns[:3])
    assert seen >= 3


def test_focus_episodes_are_a_share_of_shaped_ones_and_deterministic() -> None:
    kinds = Counter(k for i in range(60) for k in gen.make_episode(3, i, **MIX).kinds)
    assert {"f_docs", "f_multi", "f_recall"} <= set(kinds), kinds
    assert {"s_docs", "s_multi", "s_recall", "s_lookup"} <= set(kinds), kinds
    a, b = gen.make_episode(3, 1, **MIX), gen.make_episode(3, 1, **MIX)
    assert a.pieces == b.pieces
