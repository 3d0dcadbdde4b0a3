"""Every snapshot records how its state tensors are laid out (model.state_layout.layout_metadata), and a
resume refuses a snapshot whose recorded layout is not the loaded model's. Real tiny model, real
ModelEngine and Store, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent import Agent
from hybrid_agent.agent.engine import ModelEngine
from hybrid_agent.agent.errors import StateLayoutError
from hybrid_agent.memory import Store
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state_layout import layout_metadata
from hybrid_agent.model.tokenizer import ByteTokenizer

CFG = HybridConfig(vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet"])


@pytest.fixture(scope="module")
def model() -> HybridLM:
    torch.manual_seed(11)
    return HybridLM(CFG).eval()


def engine_of(model: HybridLM) -> ModelEngine:
    return ModelEngine(model, ByteTokenizer(), NativeChatFormat())


def copy_session(store: Store, source: str, fingerprint: str, meta: dict[str, Any]) -> str:
    """A session holding `source`'s turn 1 exactly, but with this snapshot `meta`: what another version
    of hybrid-agent would have written for the same model."""
    snap = store.load_snapshot(source, 1)
    info = store.create_session("copy", str(store.get_session(source).workspace), fingerprint)
    store.save_turn(info.id, 1, events=store.events(source), recurrent=snap.recurrent, pages=snap.pages,
                    n_tokens=snap.n_tokens, meta=meta)  # fmt: skip
    return info.id


def test_snapshots_record_the_layout_and_resume_refuses_another(model: HybridLM, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    agent = Agent(engine_of(model), store, workspace=tmp_path, max_new_tokens=4)
    list(agent.send_sync("hello"))
    first = agent.session_id
    meta = store.load_snapshot(first, 1).meta
    assert meta["state_layout"] == layout_metadata(CFG)
    assert "key-first" in meta["state_layout"]["layers.2.recurrent"]  # the Gated DeltaNet state
    assert "value-first" in meta["state_layout"]["layers.0.ssm"]  # the Mamba-2 state

    # The same tensors, recorded as value-first by some other version: refused, with the tensor named.
    other = dict(meta["state_layout"])
    other["layers.2.recurrent"] = other["layers.2.recurrent"].replace("key-first", "value-first")
    wrong = copy_session(store, first, model.fingerprint, {**meta, "state_layout": other})
    engine = agent.engine
    before = engine.n_tokens
    with pytest.raises(StateLayoutError, match=r"layers\.2\.recurrent.*value-first"):
        agent.resume(wrong)
    assert agent.session_id == first and engine.n_tokens == before  # nothing switched
    with pytest.raises(StateLayoutError, match="another state layout"):
        Agent(engine_of(model), store, workspace=tmp_path, session_id=wrong)

    # A snapshot saved before layouts were recorded is read as it is; the next one records it.
    old_meta = {k: v for k, v in meta.items() if k != "state_layout"}
    legacy = copy_session(store, first, model.fingerprint, old_meta)
    agent.resume(legacy)
    assert agent.session_id == legacy and agent.state_tokens == before
    list(agent.send_sync("again"))
    assert store.load_snapshot(legacy, 2).meta["state_layout"] == layout_metadata(CFG)
    agent.close()


def test_a_snapshot_written_by_tensor_parallel_ranks_resumes_at_tp1(model: HybridLM, tmp_path: Path) -> None:
    """Snapshots hold the full layout at any tp (gathered from the ranks, model/sharding.py): a layout
    recording tp=2 resumes on a one-process model to the same state; the next snapshot records tp=1."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    agent = Agent(engine_of(model), store, workspace=tmp_path, max_new_tokens=4)
    list(agent.send_sync("hello"))
    first = agent.session_id
    meta = store.load_snapshot(first, 1).meta
    assert "tensor_parallel" not in meta["state_layout"]
    at_tp2 = {**meta, "state_layout": layout_metadata(CFG, tp=2)}
    assert "2 tensor-parallel ranks" in at_tp2["state_layout"]["tensor_parallel"]
    sid = copy_session(store, first, model.fingerprint, at_tp2)
    want = agent.engine.state.to_tensors()
    agent.resume(sid)
    got = agent.engine.state.to_tensors()
    assert agent.session_id == sid and all(torch.equal(got[n], t) for n, t in want.items())
    list(agent.send_sync("again"))
    assert store.load_snapshot(sid, 2).meta["state_layout"] == layout_metadata(CFG)
    agent.close()
