"""Restoring a served state on the DecodeEngine without host round-trips: the engine's snapshots are
slices of its buffers with positions made on the host (model/decode/pages.py `snapshot_parts`, equal to
`cache_range`'s gather), pages whose positions run on from 0 are placed without sorting or searching
(equal to the general placement), and `ModelEngine.restore` plans once and copies each page's tensor
once. The CUDA check (no sync at all in a snapshot kept on the device or in its restore) is under
`-m gpu`."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import torch
from hybrid_agent.agent.engine import ModelEngine, state_snapshot
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.pages import _place_any, _runs_in_order
from hybrid_agent.model.state import ModelState, Page
from hybrid_agent.model.testing import tiny_model
from hybrid_agent.model.tokenizer import ByteTokenizer
from torch.utils._python_dispatch import TorchDispatchMode

LAYERS = ["gated_deltanet", "attention", "mamba2", "attention"]


def _engine(device: str = "cpu", seed: int = 0) -> ModelEngine:
    lm = tiny_model(LAYERS, seed).to(device)
    return ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None, decode_engine=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def _fed(eng: ModelEngine, n: int, steps: int = 3) -> ModelEngine:
    ids = torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    eng.prefill(ids)
    for tok in ids[:steps]:  # the one-token step writes its own slots too
        eng.prefill([tok])
    return eng


@pytest.mark.parametrize("on_device", [False, True])
def test_engine_snapshots_equal_the_gathered_ones_with_positions_on_the_host(on_device: bool) -> None:
    eng = _fed(_engine(), 37)
    n = eng.n_tokens
    for since in (0, 5, n - 1, n):
        rec, pages = eng.snapshot_on_device(since) if on_device else eng.snapshot(since)
        ref_rec, ref_pages = state_snapshot(eng.state, since, on_device=on_device)
        _same(rec, ref_rec)
        assert [(p.start, p.end) for p in pages] == [(p.start, p.end) for p in ref_pages]
        for got, ref in zip(pages, ref_pages, strict=True):
            _same(got.tensors, ref.tensors)
            assert all(t.device.type == "cpu" for k, t in got.tensors.items() if k.endswith(".pos"))
    # Copies: the live state going on does not change a snapshot taken before.
    rec, pages = eng.snapshot(0)
    before = {k: t.clone() for k, t in pages[0].tensors.items()}
    eng.prefill([1, 2, 3])
    _same(pages[0].tensors, before)


def test_placement_of_runs_in_order_equals_the_general_one() -> None:
    rng = random.Random(0)
    for _ in range(200):
        total = rng.randint(1, 60)
        cuts = sorted({0, total, *(rng.randint(1, total) for _ in range(rng.randint(0, 4)))})
        pages = [torch.arange(a, b) for a, b in itertools.pairwise(cuts)]
        parts = [{"page": torch.tensor(j)} for j in range(len(pages))]
        n = rng.randint(0, total)
        fast = _runs_in_order(n, parts, pages)
        assert fast is not None and len(fast) == sum(1 for a in cuts[:-1] if a < n)
        general = _place_any(0, n, parts, pages)
        assert [(t["page"], runs) for t, runs, _ in fast] == [(t["page"], runs) for t, runs, _ in general]
    # Anything else is left to the general placement: a gap, an overlap, positions out of order, a
    # first page that does not start at 0, too few positions.
    for poss, n in [
        ([torch.arange(0, 4), torch.arange(5, 9)], 9),
        ([torch.arange(0, 5), torch.arange(4, 9)], 9),
        ([torch.tensor([0, 2, 1, 3])], 4),
        ([torch.arange(1, 5)], 4),
        ([torch.arange(0, 4)], 6),
    ]:
        assert _runs_in_order(n, [{} for _ in poss], poss) is None


class _Ops(TorchDispatchMode):
    """The aten ops run inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_restoring_the_engines_own_pages_plans_once_and_copies_each_page_once() -> None:
    src = _fed(_engine(), 40)
    first_rec, first_pages = src.snapshot(0)
    src.prefill([5, 6, 7, 8])
    rec, more = src.snapshot(first_rec["n_tokens"].item())
    pages = [*first_pages, *more]  # a conversation's state: its first turn's page, then the next one's
    want = src.snapshot(0)
    eng = _fed(_engine(), 9)  # holding another session
    ops = _Ops()
    with ops:
        eng.restore(rec, pages)
    # No sorting or searching of positions (the general placement), no gather: the runs are known.
    assert not {"sort", "argsort", "searchsorted", "nonzero", "index_select", "index_copy_"} & {
        n.split(".")[0] for n in ops.names
    }
    attention = [i for i, kind in enumerate(LAYERS) if kind == "attention"]
    fixed = sum(len(f) for f in eng._decoder.buf.fixed)
    # One copy per recurrent tensor, per page and cache tensor (k, v), and each layer's positions.
    assert ops.names.count("copy_.default") == fixed + len(attention) * (2 * len(pages) + 1)
    got = eng.snapshot(0)
    _same(got[0], want[0])
    _same(got[1][0].tensors, want[1][0].tensors)
    eng.prefill([9])
    src.prefill([9])
    assert torch.equal(eng.last_logits, src.last_logits)


def test_a_saved_state_goes_straight_into_a_slot_as_the_assembled_one_would() -> None:
    model = tiny_model(LAYERS, 0)
    slots = lambda: DecodeEngine(model, max_context=64, batch_size=2, per_row=True)
    src = slots()
    first = src.prefill_row(0, list(range(3, 23)))
    src.step(torch.tensor([int(first.argmax()), 0]))
    st = src.export_row(0)
    n = st.n_tokens
    rec, pages = st.recurrent_tensors(), [Page(0, 7, st.cache_range(0, 7)), Page(7, n, st.cache_range(7, n))]
    assembled, direct = slots(), slots()
    for eng in (assembled, direct):  # another request in the other slot, which must stay as it is
        eng.prefill_row(1, [9, 8, 7, 6])
    assembled.load_row(0, ModelState.from_parts(rec, [tuple(p) for p in pages], model.config))
    ops = _Ops()
    with ops:
        direct.load_row_parts(0, rec, pages)
    assert not {"cat", "index_select", "sort", "searchsorted"} & {n.split(".")[0] for n in ops.names}
    assert direct.row_lengths == assembled.row_lengths == [n, 4] and direct.free_rows == []
    for a, b in zip(assembled.buf.fixed, direct.buf.fixed, strict=True):
        _same(a, b)
    for a, b in zip(assembled.state.layers, direct.state.layers, strict=True):
        _same(a.storage, b.storage)
    _same({"pos": assembled.buf.pos, "active": assembled.buf.active},
          {"pos": direct.buf.pos, "active": direct.buf.active})  # fmt: skip
    tokens = torch.tensor([5, 2])
    assert torch.equal(assembled.step(tokens), direct.step(tokens))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_state_kept_on_the_gpu_is_saved_and_restored_without_a_sync() -> None:
    src = _fed(_engine("cuda"), 300)
    eng = _fed(_engine("cuda"), 9)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rec, pages = src.snapshot_on_device(0)
        eng.restore(rec, pages)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    src.prefill([4])
    eng.prefill([4])
    assert torch.equal(eng.last_logits, src.last_logits)
    _same(eng.snapshot(0)[1][0].tensors, src.snapshot(0)[1][0].tensors)
