"""Continuous batching on the model's own path (model/batch.py): each row of a batch, whatever its length
and whenever it joined, decodes exactly what it decodes alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hybrid_agent.model import load_model
from hybrid_agent.model.batch import BatchState, batchable
from hybrid_agent.model.decode.generate import prefill

DEFAULT = Path(__file__).resolve().parents[2] / "model" / "default"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    lm, _, _ = load_model(str(DEFAULT), progress=False)
    return lm


def _prompt(seed: int, n: int) -> list[int]:
    return torch.randint(10, 2000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _solo(model: torch.nn.Module, ids: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    state = model.new_state()
    logits = prefill(model, ids, state)
    tokens, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits[0].double())
        tok = int(logits[0].argmax())
        tokens.append(tok)
        logits = model(torch.tensor([[tok]]), state)[:, -1]
    return tokens, all_logits


def test_rows_of_a_batch_decode_as_they_do_alone(model: torch.nn.Module) -> None:
    assert batchable(model, None) and not batchable(model, 512)
    prompts = [_prompt(1, 37), _prompt(2, 5), _prompt(3, 90), _prompt(4, 20)]
    steps = 10
    solo = [_solo(model, p, steps) for p in prompts]
    # Rows 0-2 start together; row 3 joins after 4 steps; row 1 leaves after 6.
    rows, logits, got = {}, {}, {i: [] for i in range(4)}
    for i in range(3):
        st = model.new_state()
        logits[i] = prefill(model, prompts[i], st)[0]
        rows[i] = st
    order = [0, 1, 2]
    batch = BatchState([rows[i] for i in order])
    for t in range(steps + 4):
        if t == 4:  # a new row joins: every row's state comes out and all are packed again
            st = model.new_state()
            logits[3] = prefill(model, prompts[3], st)[0]
            batch = BatchState([*(batch.row(b) for b in range(batch.size)), st])
            order.append(3)
        if t == 6:  # row 1 leaves
            keep = [b for b, i in enumerate(order) if i != 1]
            batch = BatchState([batch.row(b) for b in keep])
            order = [order[b] for b in keep]
        live = [i for i in order if len(got[i]) < steps]
        if not live:
            break
        tokens = []
        for i in order:
            if len(got[i]) < steps:
                torch.testing.assert_close(logits[i].double(), solo[i][1][len(got[i])], atol=1e-4, rtol=1e-4)
                got[i].append(int(logits[i].argmax()))
            tokens.append(got[i][-1])
        out = batch.step(model, tokens)
        for b, i in enumerate(order):
            logits[i] = out[b]
    for i in (0, 2, 3):
        assert got[i] == solo[i][0], f"row {i}"
    assert got[1] == solo[1][0][: len(got[1])] and len(got[1]) == 6


def test_a_row_taken_out_continues_alone(model: torch.nn.Module) -> None:
    a, b = _prompt(5, 12), _prompt(6, 30)
    sa, sb = model.new_state(), model.new_state()
    la, lb = prefill(model, a, sa)[0], prefill(model, b, sb)[0]
    batch = BatchState([sa, sb])
    out = batch.step(model, [int(la.argmax()), int(lb.argmax())])
    row = batch.row(0)  # a state of its own: the model's plain forward continues it
    assert row.n_tokens == len(a) + 1
    nxt = model(torch.tensor([[int(out[0].argmax())]]), row)[:, -1]
    ref = model.new_state()
    prefill(model, [*a, int(la.argmax()), int(out[0].argmax())], ref)
    torch.testing.assert_close(
        row.to_tensors()["layers.2.k"], ref.to_tensors()["layers.2.k"], atol=1e-4, rtol=1e-4
    )
    assert nxt.shape[-1] == out.shape[-1]


@pytest.mark.gpu
def test_batched_rows_on_cuda_match_their_solo_logits() -> None:
    """On the GPU (the model's own path, its dtype): teacher-forced, each row's logits at every step
    match its solo run's within the rounding of that dtype, and the argmax agrees almost everywhere."""
    lm, _, _ = load_model(str(DEFAULT), device="cuda", progress=False)
    prompts = [_prompt(11, 300), _prompt(12, 17), _prompt(13, 1200), _prompt(14, 64)]
    steps = 32
    solo = [_solo(lm, p, steps) for p in prompts]
    states = []
    for p in prompts:
        st = lm.new_state()
        prefill(lm, p, st)
        states.append(st)
    batch = BatchState(states)
    agree = total = 0
    tol = 1e-3 if lm.dtype == torch.float32 else 5e-2
    for t in range(steps - 1):
        out = batch.step(lm, [solo[i][0][t] for i in range(len(prompts))])  # the solo run's tokens
        for i in range(len(prompts)):
            ref = solo[i][1][t + 1]
            got = out[i].double()
            scale = ref.abs().max().item()
            assert (got - ref).abs().max().item() <= tol * max(1.0, scale), f"row {i} step {t}"
            agree += int(got.argmax()) == int(ref.argmax())
            total += 1
    assert agree >= 0.95 * total
