"""The real engine on the `DecodeEngine` (model/decode/) (the CUDA default; forced here on the CPU,
where the engine runs its eager path on the same preallocated buffers): a session saved and resumed on it
continues exactly as one that never stopped, its buffers grow without changing a number, and it picks
the same greedy tokens as the model's own forward. The same checks on the GPU are under `-m gpu`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hybrid_agent.agent import Agent
from hybrid_agent.agent.engine import DECODE_ENGINE_ENV, ModelEngine, want_decode_engine
from hybrid_agent.agent.events import TurnEnd
from hybrid_agent.memory import Store
from hybrid_agent.model.chat import NativeChatFormat
from hybrid_agent.model.config import HybridConfig
from hybrid_agent.model.errors import StateMismatchError
from hybrid_agent.model.hybrid import HybridLM
from hybrid_agent.model.state import ModelState, Page
from hybrid_agent.model.tokenizer import ByteTokenizer

CFG = HybridConfig(
    vocab_size=267, d_model=32, layer_types=["mamba2", "attention", "gated_deltanet", "attention"]
)
PROMPTS = ["first question", "second question", "third question"]


@pytest.fixture(scope="module")
def lm() -> HybridLM:
    torch.manual_seed(1234)
    return HybridLM(CFG).eval()


def engine(lm: HybridLM, *, on: bool, **kw: Any) -> ModelEngine:
    return ModelEngine(
        lm.to(DEVICE), ByteTokenizer(), NativeChatFormat(), window=None, decode_engine=on, **kw
    )


def run(agent: Agent, prompt: str) -> list[Any]:
    return [e for e in agent.send_sync(prompt) if isinstance(e, TurnEnd)]


def raw(store: Store, sid: str) -> list[str]:
    return [e.data["raw"] for e in store.events(sid) if e.kind == "assistant"]


DEVICE = "cpu"


def test_the_choice_follows_device_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DECODE_ENGINE_ENV, raising=False)
    assert want_decode_engine(None, torch.device("cuda")) and not want_decode_engine(
        None, torch.device("cpu")
    )
    monkeypatch.setenv(DECODE_ENGINE_ENV, "1")
    assert want_decode_engine(None, torch.device("cpu"))
    monkeypatch.setenv(DECODE_ENGINE_ENV, "0")
    assert not want_decode_engine(None, torch.device("cuda"))
    assert want_decode_engine(True, torch.device("cpu"))  # an explicit argument wins


def greedy(e: ModelEngine, prompt: list[int], n: int) -> list[int]:
    e.prefill(prompt)
    out = []
    for _ in range(n):
        tok = e.next_token()
        out.append(tok)
        e.prefill([tok])  # fed back, as the loop does
    return out


def test_engine_path_picks_the_model_paths_greedy_tokens(lm: HybridLM) -> None:
    torch.manual_seed(0)
    prompt = torch.randint(0, CFG.vocab_size, (40,)).tolist()
    on, off = engine(lm, on=True), engine(lm, on=False)
    assert on.uses_decode_engine and not off.uses_decode_engine
    assert greedy(on, prompt, 24) == greedy(off, prompt, 24)
    assert on.n_tokens == off.n_tokens == 40 + 24
    # The snapshots (what the store gets) agree too: same tensors, same names.
    rec_on, pages_on = on.snapshot(0)
    rec_off, pages_off = off.snapshot(0)
    assert rec_on.keys() == rec_off.keys() and pages_on[0].tensors.keys() == pages_off[0].tensors.keys()
    for k in rec_on:
        torch.testing.assert_close(rec_on[k], rec_off[k], rtol=1e-4, atol=1e-5)


def test_buffers_grow_without_changing_a_number(lm: HybridLM) -> None:
    torch.manual_seed(1)
    prompt = torch.randint(0, CFG.vocab_size, (30,)).tolist()
    small, big = engine(lm, on=True, max_context=16), engine(lm, on=True, max_context=4096)
    assert small._decoder.max_context == 16
    a, b = greedy(small, prompt, 20), greedy(big, prompt, 20)
    assert small._decoder.max_context >= 50 and a == b
    rec_a, _ = small.snapshot(0)
    rec_b, _ = big.snapshot(0)
    for k in rec_a:
        assert torch.equal(rec_a[k], rec_b[k]), k


def test_restore_on_the_engine_continues_exactly(lm: HybridLM) -> None:
    torch.manual_seed(2)
    prompt = torch.randint(0, CFG.vocab_size, (33,)).tolist()
    straight = engine(lm, on=True)
    first = greedy(straight, prompt, 10)
    rec, pages = straight.snapshot(0)
    rest = greedy(straight, [5, 6, 7], 12)
    resumed = engine(lm, on=True)
    resumed.restore(rec, pages)
    assert resumed.uses_decode_engine and resumed.n_tokens == len(prompt) + len(first)
    assert greedy(resumed, [5, 6, 7], 12) == rest


def test_restore_goes_straight_into_the_buffers(lm: HybridLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the engine, restore copies the pages into the DecodeEngine's buffers (load_parts): no state is
    assembled first (ModelState.from_parts is not called), the buffers grow when the snapshot needs it,
    a live session is replaced, and the continuation is the uninterrupted one's."""
    torch.manual_seed(4)
    prompt = torch.randint(0, CFG.vocab_size, (50,)).tolist()
    straight = engine(lm, on=True)
    first = greedy(straight, prompt[:20], 4)
    _, turn1 = straight.snapshot(0)
    greedy(straight, prompt[20:], 6)
    rec, turn2 = straight.snapshot(20 + len(first))  # as the store holds it: one page per turn
    rest = greedy(straight, [5, 6, 7], 12)

    def no_from_parts(*a: Any, **k: Any) -> Any:
        raise AssertionError("restore on the DecodeEngine assembled a ModelState")

    monkeypatch.setattr(ModelState, "from_parts", no_from_parts)
    resumed = engine(lm, on=True, max_context=16)  # smaller than the snapshot: grows on restore
    greedy(resumed, [1, 2, 3], 2)  # a live session, replaced by the restore
    resumed.restore(rec, [*turn2, *turn1])
    assert resumed.uses_decode_engine and resumed._decoder.max_context > resumed.n_tokens
    assert resumed.n_tokens == 50 + 4 + 6
    assert greedy(resumed, [5, 6, 7], 12) == rest


def test_a_bad_snapshot_leaves_the_live_session_as_it_was(lm: HybridLM) -> None:
    torch.manual_seed(5)
    prompt = torch.randint(0, CFG.vocab_size, (30,)).tolist()
    source = engine(lm, on=True)
    greedy(source, prompt, 3)
    rec, pages = source.snapshot(0)
    half = Page(10, 33, source.state.cache_range(10, 33))  # positions 0..9 missing
    live, twin = engine(lm, on=True), engine(lm, on=True)
    for e in (live, twin):
        greedy(e, [9, 8, 7, 6], 5)
    for bad_rec, bad_pages in ((rec, [half]), ({k: v for k, v in rec.items() if k != "n_tokens"}, pages)):
        with pytest.raises(StateMismatchError):
            live.restore(bad_rec, bad_pages)
    assert live.n_tokens == twin.n_tokens
    assert greedy(live, [4, 5], 10) == greedy(twin, [4, 5], 10)


def test_agent_session_resumes_exactly_on_the_engine(lm: HybridLM, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")

    def agent() -> Agent:
        return Agent(engine(lm, on=True), store, workspace=tmp_path, max_new_tokens=8)

    straight = agent()
    for p in PROMPTS:
        run(straight, p)
    stopped = agent()
    for p in PROMPTS[:2]:
        run(stopped, p)
    resumed = agent()
    resumed.resume(stopped.session_id)
    assert resumed.engine.uses_decode_engine  # type: ignore[attr-defined]
    run(resumed, PROMPTS[2])
    assert raw(store, stopped.session_id) == raw(store, straight.session_id)
    a, b = store.load_snapshot(straight.session_id, 3), store.load_snapshot(stopped.session_id, 3)
    assert a.n_tokens == b.n_tokens
    for k in a.recurrent:
        assert torch.equal(a.recurrent[k], b.recurrent[k]), k
    for k in a.pages[-1][2]:
        assert torch.equal(a.pages[-1][2][k], b.pages[-1][2][k]), k
    for ag in (straight, stopped, resumed):
        ag.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_engine_is_the_default_and_resume_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(3)
    lm = HybridLM(CFG).eval().to("cuda")
    plain = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    assert plain.uses_decode_engine and plain.device.startswith("cuda")
    prompt = torch.randint(0, CFG.vocab_size, (40,)).tolist()
    first = greedy(plain, prompt, 10)
    rec, pages = plain.snapshot(0)
    rest = greedy(plain, [5, 6, 7], 30)
    # Through the store, loaded straight onto the GPU, into a new engine: the same continuation.
    store = Store(tmp_path / "s.db")
    sid = store.create_session("t", "/w", "fp").id
    store.save_turn(sid, 1, events=[], recurrent=rec, pages=[(p.start, p.end, p.tensors) for p in pages],
                    n_tokens=len(prompt) + len(first))  # fmt: skip
    snap = store.load_snapshot(sid, device="cuda")
    assert all(t.is_cuda for t in snap.recurrent.values())
    resumed = ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=None)
    resumed.restore(snap.recurrent, snap.pages)
    assert greedy(resumed, [5, 6, 7], 30) == rest
    # A window keeps the model's own path (the engine holds full attention only).
    assert not ModelEngine(lm, ByteTokenizer(), NativeChatFormat(), window=16).uses_decode_engine
    store.close()


@pytest.mark.parametrize("on", [True, False], ids=["decode_engine", "model_path"])
def test_restore_reads_the_given_tensors_and_keeps_no_reference(lm: HybridLM, on: bool) -> None:
    # The serve memory tier hands its own tensors to `restore` (no clone first): the restored state must
    # equal them bit for bit, and decoding on must leave them unchanged.
    torch.manual_seed(5)
    prompt = torch.randint(0, CFG.vocab_size, (40,)).tolist()
    live = engine(lm, on=on)
    live.prefill(prompt)
    rec, pages = live.snapshot(0)  # copies: the live state's decoding below must not change them
    kept = (
        {k: v.clone() for k, v in rec.items()},
        [{k: v.clone() for k, v in p.tensors.items()} for p in pages],
    )
    rest = greedy(live, [5, 6, 7], 12)
    resumed = engine(lm, on=on)
    resumed.restore(rec, pages)
    got_rec, got_pages = resumed.snapshot(0)
    for name, t in rec.items():
        assert torch.equal(got_rec[name], t), name
    assert [(p.start, p.end) for p in got_pages] == [(p.start, p.end) for p in pages]
    for got, want in zip(got_pages, pages, strict=True):
        assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)
    assert greedy(resumed, [5, 6, 7], 12) == rest
    for name, t in kept[0].items():
        assert torch.equal(rec[name], t), name
    for p, want in zip(pages, kept[1], strict=True):
        assert all(torch.equal(p.tensors[k], want[k]) for k in want)
