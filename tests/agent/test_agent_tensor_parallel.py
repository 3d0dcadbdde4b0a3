"""The agent on two tensor-parallel ranks (agent/tp_engine.py): rank 0 runs the agent, rank 1 serves its
model calls; real gloo group (threads as ranks), real tiny model, real Store. Its answer equals the
one-process agent's, its snapshot (full layout) equals the one-process state, and the session resumes
on a one-process model (and a one-process session on the two ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hybrid_agent.agent import Agent
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.tp_engine import LeaderEngine, serve
from hybrid_agent.memory import Store
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.parallel import TensorParallel
from hybrid_agent.model.sharding import shard_model
from hybrid_agent.model.testing import thread_ranks, tiny_model
from hybrid_agent.model.tokenizer import ByteTokenizer

KINDS = ["mamba2", "attention", "gated_deltanet"]


def _said(store: Store, sid: str) -> list[tuple[str, str]]:
    return [(e.kind, e.content) for e in store.events(sid)]


@pytest.mark.parametrize("decode_engine", [False, True])
def test_agent_on_two_ranks_equals_one_process(tmp_path: Path, decode_engine: bool) -> None:
    """With decode_engine=True every rank (and the one process) runs the DecodeEngine (model/decode/)."""
    full = tiny_model(KINDS, seed=5)
    one = Store(f"sqlite:///{tmp_path / 'one.db'}")
    one_engine = ModelEngine(full, ByteTokenizer(), NativeChatFormat(), decode_engine=decode_engine)
    agent = Agent(one_engine, one, workspace=tmp_path, max_new_tokens=4)
    list(agent.send_sync("hello"))
    want_state = agent.engine.state.to_tensors()
    want_events = _said(one, agent.session_id)
    assert any(kind == "assistant" and text for kind, text in want_events)
    one_sid = agent.session_id
    agent.close()

    two = one  # the same database: rank 0 resumes the one-process session too

    def rank(tp: TensorParallel):
        model = shard_model(full, tp)
        if tp.rank > 0:
            return serve(
                ModelEngine(model, ByteTokenizer(), NativeChatFormat(), decode_engine=decode_engine), tp
            )
        engine = LeaderEngine(model, ByteTokenizer(), NativeChatFormat(), decode_engine=decode_engine)
        try:
            assert engine.uses_decode_engine == decode_engine
            a = Agent(engine, two, workspace=tmp_path, max_new_tokens=4)
            list(a.send_sync("hello"))
            sid = a.session_id
            # A one-process session resumed on the two ranks: the same state as where it was saved.
            a.resume(one_sid)
            resumed = engine.snapshot(0)[0]
            a.close()
            return sid, resumed
        finally:
            engine.close_ranks()

    sid, resumed = thread_ranks(2, rank)[0]
    got_events = _said(two, sid)
    assert got_events == want_events
    snap = two.load_snapshot(sid, 1)
    assert "2 tensor-parallel ranks" in snap.meta["state_layout"]["tensor_parallel"]
    for name, t in snap.recurrent.items():
        err = (t.float() - want_state[name].float()).abs().max().item() if t.numel() else 0.0
        assert err <= 1e-4 * max(1.0, want_state[name].float().abs().max().item()), name
    saved_one = one.load_snapshot(one_sid, 1).recurrent
    assert all(torch.equal(resumed[n], saved_one[n]) for n in saved_one)

    # The two-rank session resumed in one process.
    back_engine = ModelEngine(full, ByteTokenizer(), NativeChatFormat(), decode_engine=decode_engine)
    back = Agent(back_engine, two, workspace=tmp_path, session_id=sid, max_new_tokens=4)
    state = back.engine.state.to_tensors()
    assert all(torch.equal(state[n], t.to(state[n].dtype)) for n, t in snap.recurrent.items() if n in state)
    back.close()
