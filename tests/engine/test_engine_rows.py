"""DecodeEngine with per-row positions (model/decode/rows.py) on the CPU, the step the CUDA graph
captures run uncaptured: every row of the batch, whatever its length and whenever it joined or left,
decodes exactly the greedy tokens (and close to the logits) of its own run alone on the model's path."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.model import HybridLM
from hybrid_agent.model.decode.engine import DecodeEngine
from hybrid_agent.model.decode.generate import prefill
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.testing import TINY
from hybrid_agent.model.testing import tiny_model as make

MLA = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_heads": 4}


def solo(model: HybridLM, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and the logits before each, the prompt alone through the model's own forward."""
    state = model.new_state()
    logits = prefill(model, torch.tensor(prompt, device=model.device), state, chunk_size=8)[0]
    tokens, all_logits = [], []
    for _ in range(n):
        all_logits.append(logits.clone())
        tokens.append(int(logits.argmax()))
        logits = model(torch.tensor([[tokens[-1]]], device=model.device), state)[0, -1]
    return tokens, all_logits


def _prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(
    "layers, over",
    [
        (["gated_deltanet", "attention", "mamba2", "mlp", "attention"], {}),
        (["attention", "short_conv"], {"attention": {**TINY["attention"], "qk_norm": "head",
                                                     "output_gate": True, "rope_fraction": 0.5}}),
        (["mla", "gated_deltanet"], {"mla": MLA}),
    ],
    ids=["gdn-attn-mamba", "gated-partial-rope", "mla"],
)  # fmt: skip
@pytest.mark.parametrize("fuse", [True, False])
def test_rows_join_and_leave_and_decode_as_alone(layers: list[str], over: dict, fuse: bool) -> None:
    join_and_leave(make(layers, **over), fuse=fuse, use_graphs=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layers, over", [(["gated_deltanet", "attention", "mamba2", "mlp", "attention"], {}),
                                          (["mla", "gated_deltanet"], {"mla": MLA})])  # fmt: skip
def test_captured_rows_join_and_leave_gpu(layers: list[str], over: dict) -> None:
    """The same on CUDA with the step captured once as a graph (Triton kernels with per-row lengths)."""
    join_and_leave(make(layers, **over).to("cuda"), fuse=True, use_graphs=True)


def join_and_leave(model: HybridLM, *, fuse: bool, use_graphs: bool) -> None:
    """Requests 0 and 1 start (slot 1 empty), 2 joins after 2 steps, 1 leaves after 4 and 3 takes its slot;
    each request's logits and greedy tokens are its solo run's, and the one that left continues alone."""
    prompts = {0: _prompt(1, 13), 1: _prompt(2, 3), 2: _prompt(3, 21), 3: _prompt(4, 7)}
    steps = 8
    want = {i: solo(model, p, steps) for i, p in prompts.items()}
    engine = DecodeEngine(model, max_context=48, batch_size=3, per_row=True, fuse=fuse, prefill_chunk=8,
                          use_graphs=use_graphs)  # fmt: skip
    assert engine.static and engine.graphed == use_graphs and engine.free_rows == [0, 1, 2]
    dev = model.device
    slot_of, logits, got, n_steps = {}, {}, {i: [] for i in prompts}, 0
    for i, b in ((0, 0), (1, 2)):  # two requests; slot 1 stays empty at first
        logits[i] = engine.prefill_row(b, prompts[i]).clone()
        slot_of[i] = b
    for t in range(steps + 6):
        if t == 2:  # a third request joins in the free slot
            slot_of[2] = engine.free_rows[0]
            logits[2] = engine.prefill_row(slot_of[2], prompts[2]).clone()
        if t == 4:  # request 1 leaves (exported and continued alone below); request 3 takes its slot
            b = slot_of.pop(1)
            left = engine.export_row(b)
            assert left.n_tokens == len(prompts[1]) + 4
            engine.clear_row(b)
            slot_of[3] = b
            logits[3] = engine.prefill_row(b, prompts[3]).clone()
        tokens = torch.zeros(3, dtype=torch.long, device=dev)
        for i, b in slot_of.items():
            if len(got[i]) < steps:
                torch.testing.assert_close(logits[i], want[i][1][len(got[i])], atol=1e-4, rtol=1e-4)
                got[i].append(int(logits[i].argmax()))
            tokens[b] = got[i][-1]
        if all(len(got[i]) >= steps for i in slot_of):
            break
        out = engine.step(tokens)
        n_steps += 1
        for i, b in slot_of.items():
            logits[i] = out[b].clone()
    for i in (0, 2, 3):
        assert got[i] == want[i][0], f"request {i}"
    assert engine.row_lengths[slot_of[0]] == len(prompts[0]) + n_steps  # fed every step since it joined
    assert engine.row_lengths[slot_of[3]] == len(prompts[3]) + n_steps - 4
    # request 1, taken out after 4 tokens, continues alone on the model's path as if never batched
    assert got[1] == want[1][0][:4]
    cont = model(torch.tensor([[want[1][0][4]]], device=dev), left)[0, -1]  # its 4 tokens are in the state
    torch.testing.assert_close(cont, want[1][1][5], atol=1e-4, rtol=1e-4)


def test_load_row_from_a_saved_state_and_refusals() -> None:
    """A state saved from one slot (snapshot tensors round trip) loads into another and continues there;
    the whole-batch calls refuse a per-row engine, and a window refuses per-row mode."""
    model = make(["attention", "gated_deltanet"])
    prompt = _prompt(5, 9)
    tokens, all_logits = solo(model, prompt, 5)
    engine = DecodeEngine(model, max_context=32, batch_size=2, per_row=True)
    first = engine.prefill_row(0, prompt)
    out = engine.step(torch.tensor([int(first.argmax()), 0]))
    saved = engine.export_row(0).to_tensors()
    engine.clear_row(0)
    from hybrid_agent.model.state import ModelState

    engine.load_row(1, ModelState.from_tensors(saved, model.config))
    assert engine.free_rows == [0] and engine.row_lengths == [0, 10]
    torch.testing.assert_close(out[0], all_logits[1], atol=1e-4, rtol=1e-4)
    out = engine.step(torch.tensor([0, tokens[1]]))
    torch.testing.assert_close(out[1], all_logits[2], atol=1e-4, rtol=1e-4)
    # a snapshot's parts (recurrent tensors and cache pages, as stored) into the other slot
    from hybrid_agent.model.state import Page

    st = engine.export_row(1)
    pages = [Page(0, 6, st.cache_range(0, 6)), Page(6, st.n_tokens, st.cache_range(6, st.n_tokens))]
    engine.clear_row(1)
    engine.load_row_parts(0, st.recurrent_tensors(), pages)
    assert engine.free_rows == [1] and engine.row_lengths == [11, 0]
    out = engine.step(torch.tensor([tokens[2], 0]))
    torch.testing.assert_close(out[0], all_logits[3], atol=1e-4, rtol=1e-4)
    engine.reset()
    assert engine.free_rows == [0, 1] and engine.row_lengths == [0, 0]
    with pytest.raises(StateMismatchError, match="per_row=True"):
        engine.prefill(torch.tensor(prompt))
    with pytest.raises(StateMismatchError, match="per_row=True"):
        DecodeEngine(model, max_context=32).load_row(0, engine.export_row(1))
    windowed = make(["attention", "gated_deltanet"], attention={**TINY["attention"], "sliding_window": 8})
    with pytest.raises(StateMismatchError, match="one at a time"):
        DecodeEngine(windowed, max_context=32, batch_size=2, per_row=True)


def test_a_row_view_reads_the_slot_without_copying_it() -> None:
    """`view_row` gives what `export_row` copies (equal tensors), as views of the slot's buffers: a
    snapshot of a long row in the batch copies only what it reads."""
    model = make(["attention", "gated_deltanet"])
    engine = DecodeEngine(model, max_context=32, batch_size=2, per_row=True)
    engine.prefill_row(1, _prompt(6, 7))
    view, copy = engine.view_row(1), engine.export_row(1)
    assert view.n_tokens == copy.n_tokens == 7
    want, got = copy.to_tensors(), view.to_tensors()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    same = lambda a, b: a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    for ls, buf in zip(view.layers, engine.buf.fixed, strict=True):  # recurrent tensors: the buffers'
        for name, t in ls.recurrent.items():
            assert same(t, buf[name])
    for ls, out, live in zip(view.layers, copy.layers, engine.buf.state.layers, strict=True):
        for name, t in ls.cache.items():  # cache: views of the buffers; in the export, copies
            assert same(t, live.storage[name]) and not same(out.cache[name], live.storage[name])
