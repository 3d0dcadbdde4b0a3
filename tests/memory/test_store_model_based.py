"""Model-based test: random sequences of create / save / fork / delete / load against a plain-Python
reference of what every session should hold. Any divergence (a lost page, a fork that sees its
parent's later turns, a blob collected too early) fails with the shortest sequence that shows it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import torch
from hybrid_agent.memory import Event, Store
from hybrid_agent.model import Page
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule


def tensors(seed: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(n, 3, generator=g), "b": torch.randn(2, generator=g).to(torch.bfloat16)}


@dataclass
class Turn:
    turn: int
    n_tokens: int
    seed: int
    pages: list[tuple[int, int, int]] = field(default_factory=list)  # every page so far: start, end, seed
    events: list[str] = field(default_factory=list)  # every event content so far


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.store = Store(Path(self.dir.name) / "s.db")
        self.ref: dict[str, list[Turn]] = {}
        self.seeds = iter(range(1, 1_000_000))

    def teardown(self) -> None:
        for sid in list(self.ref):
            self.store.delete_session(sid)
        with self.store._engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM blobs")).scalar_one()
        self.store.close()
        self.dir.cleanup()
        assert left == 0, f"{left} blobs left after every session was deleted"

    @rule()
    def create(self) -> None:
        self.ref[self.store.create_session("s", "/w", "fp").id] = []

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), new_tokens=st.integers(0, 12), skip=st.integers(1, 3), same_state=st.booleans())
    def save(self, data: st.DataObject, new_tokens: int, skip: int, same_state: bool) -> None:
        sid = data.draw(st.sampled_from(list(self.ref)))
        turns = self.ref[sid]
        last = turns[-1] if turns else Turn(0, 0, next(self.seeds))
        seed = last.seed if same_state and turns else next(self.seeds)  # same state: deduplicated blob
        pages = list(last.pages)
        new_pages = []
        if new_tokens:
            page = (last.n_tokens, last.n_tokens + new_tokens, next(self.seeds))
            pages.append(page)
            new_pages.append(Page(page[0], page[1], tensors(page[2], new_tokens)))
        text = f"{sid[:4]} turn {last.turn + skip}"
        self.store.save_turn(
            sid,
            last.turn + skip,
            events=[Event("user", text)],
            recurrent=tensors(seed, 4),
            pages=new_pages,
            n_tokens=last.n_tokens + new_tokens,
        )
        turns.append(Turn(last.turn + skip, last.n_tokens + new_tokens, seed, pages, [*last.events, text]))

    @precondition(lambda self: any(self.ref.values()))
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from([s for s, t in self.ref.items() if t]))
        at = data.draw(st.sampled_from(self.ref[sid]))
        child = self.store.fork_session(sid, at.turn)
        self.ref[child.id] = [t for t in self.ref[sid] if t.turn <= at.turn]

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(list(self.ref)))
        self.store.delete_session(sid)
        del self.ref[sid]

    @precondition(lambda self: any(self.ref.values()))
    @rule(data=st.data(), window=st.one_of(st.none(), st.integers(1, 30)), sinks=st.integers(0, 6))
    def load(self, data: st.DataObject, window: int | None, sinks: int) -> None:
        sid = data.draw(st.sampled_from([s for s, t in self.ref.items() if t]))
        want = data.draw(st.sampled_from(self.ref[sid]))
        snap = self.store.load_snapshot(sid, want.turn, window=window, sinks=sinks)
        assert (snap.turn, snap.n_tokens) == (want.turn, want.n_tokens)
        for name, t in tensors(want.seed, 4).items():
            assert torch.equal(snap.recurrent[name], t)
        n = want.n_tokens
        expected = [p for p in want.pages if window is None or p[0] < sinks or p[1] > n - window]
        assert [(p[0], p[1]) for p in snap.pages] == [(s, e) for s, e, _ in expected]
        for page, (s, e, seed) in zip(snap.pages, expected, strict=True):
            for name, t in tensors(seed, e - s).items():
                assert torch.equal(page[2][name], t)
        assert [e.content for e in self.store.events(sid, upto_turn=want.turn)] == want.events

    @invariant()
    def sessions_and_latest_turns_match(self) -> None:
        if not hasattr(self, "store"):
            return
        got = {s.id: s.latest_turn for s in self.store.list_sessions()}
        assert got == {sid: (t[-1].turn if t else None) for sid, t in self.ref.items()}


StoreMachine.TestCase.settings = settings(
    max_examples=10, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_store_against_reference = StoreMachine.TestCase
