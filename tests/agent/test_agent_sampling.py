"""Sampled (not greedy) sessions resume exactly too: the sampler's random state is saved with every
snapshot. Real model, real Store; in one process (cross-process resume is tests/agent/test_agent_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from hybrid_agent.agent import Agent
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM


def raw_turns(agent: Agent) -> list[str]:
    return [e.data["raw"] for e in agent.history() if e.kind == "assistant"]


def test_sampled_session_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(7)
    HybridLM(HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention"])).save_pretrained(
        tmp_path / "m"
    )
    opts = {"model": str(tmp_path / "m"), "db": str(tmp_path / "s.db"), "workspace": str(tmp_path),
            "temperature": 1.0, "seed": 3, "max_new_tokens": 8}  # fmt: skip
    prompts = ["one", "two", "three"]
    straight = Agent.open(**opts)
    for p in prompts:
        list(straight.send_sync(p))
    stopped = Agent.open(**opts)
    for p in prompts[:2]:
        list(stopped.send_sync(p))
    sid = stopped.session_id
    stopped.close()
    resumed = Agent.open(**{**opts, "seed": 99}, resume=sid)  # the saved sampler state wins over the seed
    list(resumed.send_sync(prompts[2]))
    assert raw_turns(resumed) == raw_turns(straight)
    assert len(set(raw_turns(straight))) == 3  # sampled, and not all the same text
    # A new session restarts from the seed: the same first answer as the first session.
    fresh = Agent.open(**opts)
    list(fresh.send_sync("one"))
    assert raw_turns(fresh) == raw_turns(straight)[:1]
    for a in (straight, resumed, fresh):
        a.close()
