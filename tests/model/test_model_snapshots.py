"""The snapshot protocol the agent follows, under random turn boundaries and window policies:
save the recurrent tensors and the new cache pages after each turn, rebuild from only the pages the
window needs, and continue exactly like the state that never stopped."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridConfig, HybridLM, ModelState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LAYERS = ["attention", "mamba2", "gated_deltanet", "parallel"]


@pytest.fixture(scope="module")
def model() -> HybridLM:
    torch.manual_seed(0)
    cfg = HybridConfig(
        vocab_size=50,
        d_model=32,
        layer_types=LAYERS,
        attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
        mamba2={"head_dim": 8, "d_state": 8, "chunk_size": 8},
        gated_deltanet={"n_heads": 2, "head_k_dim": 8, "head_v_dim": 8, "chunk_size": 8},
        mlp={"hidden_dim": 64},
        init_std=0.3,
    )
    return HybridLM(cfg).eval()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    window=st.one_of(st.none(), st.integers(1, 40)),  # >= 16: eviction in batches
    sinks=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_resume_from_pages_equals_never_stopped(model, turns, window, sinks, seed):
    ids = torch.randint(0, 50, (1, sum(turns) + 3), generator=torch.Generator().manual_seed(seed))
    live = model.new_state(window=window, sinks=sinks)
    live.keep_from = 0
    pages, saved = [], 0
    for n in turns:  # one turn: prefill, then decode a token at a time
        model(ids[:, saved : saved + 1], live)
        for t in range(saved + 1, saved + n):
            model(ids[:, t : t + 1], live)
        end = saved + n
        pages.append((saved, end, live.cache_range(saved, end)))  # the new pages only
        recurrent = live.recurrent_tensors()
        live.keep_from, saved = end, end
        for i in range(len(live.layers)):
            live.evict(i)
    # Resume from the last snapshot with only the pages the window reads.
    needed = [p for p in pages if window is None or p[0] < sinks or p[1] > saved - window]
    resumed = ModelState.from_parts(recurrent, needed, model.config, window=window, sinks=sinks)
    assert resumed.n_tokens == live.n_tokens == saved
    tail = ids[:, saved:]
    want, got = model(tail, live), model(tail, resumed)
    # Stale tokens that the live state still holds (eviction in batches) are masked: same logits, up to
    # the order of a softmax sum.
    assert float((want - got).abs().max() / want.abs().max()) < 1e-5
