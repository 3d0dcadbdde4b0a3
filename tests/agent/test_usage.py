"""agent/usage.py: the attention cache measured on a real engine against a full-attention reference,
speeds and session time from the turn records a real agent saved, and git's branch and dirty state
read from a real repository."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.usage import (
    attention_cache,
    describe,
    duration,
    git_status,
    speeds,
    usage_of,
)  # fmt: skip
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.tokenizer import ByteTokenizer


def engine(window: int | None, sinks: int = 2) -> ModelEngine:
    torch.manual_seed(0)
    cfg = HybridConfig(vocab_size=300, d_model=32, layer_types=["mamba2", "attention", "attention"])
    return ModelEngine(HybridLM(cfg), ByteTokenizer(), NativeChatFormat(), window=window, sinks=sinks)


def test_the_cache_limit_is_what_full_attention_holds_at_window_plus_sinks() -> None:
    windowed = engine(window=16, sinks=2)
    windowed.prefill(list(range(40, 140)))  # far past the window
    windowed.mark_saved()  # a snapshot took the tokens: the cache may drop what left the window
    windowed.prefill([7])
    cache, limit = attention_cache(windowed, windowed.window, windowed.sinks)
    full = engine(window=None)
    full.prefill(list(range(40, 58)))  # window + sinks tokens
    full_cache, full_limit = attention_cache(full, None, 0)
    assert full_limit is None and limit == full_cache
    # What it holds now: the cache tensors and positions of the live state, counted independently.
    held = sum(
        t.numel() * t.element_size()
        for name, t in windowed.state.to_tensors().items()
        if name.startswith("layers.") and (name.endswith(".pos") or name.rsplit(".", 1)[1] in ("k", "v"))
    )
    assert cache == held and limit <= cache < 2 * limit  # the window, plus the eviction slack
    assert attention_cache(object(), 16, 2) == (None, None)  # an engine without a ModelState


def test_speeds_and_time_come_from_the_turn_records(make_agent) -> None:
    agent, _ = make_agent(["One.<|end|>", "Two, a longer answer.<|end|>"])
    assert usage_of(agent).snapshot_bytes == 0 and usage_of(agent).decode_tokens_per_s is None
    for text in ("one", "two"):
        end = agent.send_sync(text)[-1]
    metas = [t.meta for t in agent.store.turns(agent.session_id)]
    usage = usage_of(agent)
    assert usage.decode_tokens_per_s == pytest.approx(end.tokens_per_s, rel=1e-3)
    assert usage.prefill_tokens_per_s == pytest.approx(metas[-1]["prompt_tokens"] / metas[-1]["prefill_s"])
    assert usage.session_s == pytest.approx(sum(m["duration_s"] for m in metas))
    assert all(m["duration_s"] >= m["prefill_s"] + m["decode_s"] > 0 for m in metas)
    assert usage.snapshot_bytes == agent.store.snapshot_bytes()[agent.session_id] > 0
    assert usage.state_tokens == agent.state_tokens
    assert speeds([{"prompt_tokens": 5}]).prefill_tokens_per_s is None  # a turn saved before timings
    lines = describe(usage, "main *")
    assert lines[-1] == "git          main *" and any(line.startswith("on disk") for line in lines)


def test_duration_fits_a_status_field() -> None:
    assert [duration(s) for s in (0, 59.9, 65, 3600 + 3 * 60 + 7)] == ["0 s", "59 s", "1m 05s", "1h 03m"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_status_reads_branch_and_dirty_state(tmp_path: Path) -> None:
    assert git_status(tmp_path) is None  # not a repository
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@e", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # fmt: skip
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q", "-b", "trunk")
    (repo / "a.txt").write_text("a\n")
    status = git_status(repo)
    assert status is not None and (status.branch, status.dirty) == ("trunk", True)  # untracked file
    git("add", "a.txt")
    git("commit", "-qm", "a")
    assert str(git_status(repo)) == "trunk"
    (repo / "sub").mkdir()
    assert str(git_status(repo / "sub")) == "trunk"  # from a folder inside it
    (repo / "a.txt").write_text("b\n")
    assert str(git_status(repo)) == "trunk *"
    head = git("rev-parse", "HEAD").strip()
    git("checkout", "-q", "--detach")
    assert git_status(repo).branch == f"detached@{head[:7]}"
