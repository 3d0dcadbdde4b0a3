"""The held-out eval (bench/eval_heldout.py): enough tasks in every category, rules that accept a
right solution run through the real tools and reject an empty turn, and no text shared with the
training data (scripts/check_eval_overlap.py)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

import check_eval_overlap as overlap  # noqa: E402
import eval_default_model as ev  # noqa: E402
import eval_heldout as ho  # noqa: E402
from hybrid_agent.tools import ToolRegistry  # noqa: E402


def test_at_least_200_tasks_over_every_category_and_limit_keeps_them_all() -> None:
    jobs = ev.heldout_jobs(None, 24, None)
    assert len(jobs) >= 200
    assert Counter(cat for _, cat, _ in jobs) == {cat: 24 for cat in ho.CATEGORIES}
    assert {cat for _, cat, _ in ev.heldout_jobs(None, 24, 9)} == set(ho.CATEGORIES)


@pytest.mark.parametrize("category", [c for c in ho.CATEGORIES if c != "recall_resume"])
def test_rules_accept_a_right_solution_and_reject_an_empty_turn(tmp_path: Path, category: str) -> None:
    for i in range(6):
        rng = random.Random(f"test:{category}:{i}")
        ws = ho.make_workspace(rng, tmp_path / f"ws{i}")
        task = ho.make_task(rng, ws, category)
        assert not task.rule(ws.root, "", []), task.prompt
        with ToolRegistry(workspace=ws.root, load_plugins=False) as reg:
            for name, args in task.solution:
                reg.call(name, dict(args))
        assert task.rule(ws.root, task.answer, task.solution), (task.prompt, task.solution)
        if category in ("edit_value", "multi_step", "create_file"):  # the file's content is what counts
            other = ho.make_workspace(random.Random(f"test:{category}:{i}"), tmp_path / f"fresh{i}")
            assert not task.rule(other.root, task.answer, task.solution)


def test_prompts_are_deterministic_and_vary() -> None:
    a, b = ho.all_prompts(4, 7), ho.all_prompts(4, 7)
    assert a == b
    assert len(set(a)) > 0.8 * len(a)
    assert ho.all_prompts(4, 8) != a


def test_typos_never_touch_the_names_to_copy() -> None:
    rng = random.Random(0)
    for _ in range(200):
        text = ho.typo(
            rng,
            "Could you please update REFUND_WINDOW_DAYS in shopfront/settings.py",
            ["REFUND_WINDOW_DAYS", "shopfront/settings.py", "date"],
            spare_containing=True,  # the eval's rule (`wording`): "update" holds "date"
        )
        assert "REFUND_WINDOW_DAYS" in text and "shopfront/settings.py" in text and "update" in text


def test_no_eval_8gram_in_the_training_requests_and_no_shared_names() -> None:
    train = overlap.training_requests(episodes=15)
    evals = overlap.eval_requests(per_category=6)
    assert len(train) > 100 and len(evals) > 50
    assert overlap.overlap(train, evals, 8)["shared"] == 0
    assert overlap.pool_clashes() == []
    # the check can fail: an eval request copied into the training side is found
    assert overlap.overlap([*train, evals[3]], evals, 8)["shared"] > 0 or len(evals[3].split()) < 8


@pytest.mark.slow
def test_no_eval_8gram_in_500_training_episodes() -> None:
    result = overlap.overlap(overlap.training_requests(500), overlap.eval_requests(24), 8)
    assert result["shared"] == 0, result["examples"]


def test_a_refusal_counts_only_after_looking_for_that_file(tmp_path: Path) -> None:
    rng = random.Random("refusal")
    ws = ho.make_workspace(rng, tmp_path / "ws")
    task = ho.make_task(rng, ws, "refusal_missing_file")
    (rel,) = [args["path"] for _, args in task.solution]
    assert task.rule(ws.root, f"{rel} does not exist.", [("read_file", {"path": rel})])
    assert not task.rule(ws.root, "It does not exist.", [("read_file", {"path": "other" + rel})])
    assert not task.rule(ws.root, "It does not exist.", [])
    assert not task.rule(ws.root, f"Here is {rel}.", [("read_file", {"path": rel})])
