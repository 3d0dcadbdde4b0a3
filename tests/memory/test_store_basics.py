"""Store round trips on every backend: sessions, events, exact tensors, pages, windows, errors."""

from __future__ import annotations

import pytest
import torch
from hybrid_agent.memory import (
    Event,
    FingerprintMismatchError,
    InvalidEventError,
    InvalidPageError,
    SessionNotFoundError,
    Store,
    TurnNotFoundError,
    TurnOrderError,
)
from hybrid_agent.model import Page

FP = "a" * 64


def recurrent_state(turn: int) -> dict[str, torch.Tensor]:
    """Every dtype a model state uses, different per turn, including edge shapes."""
    g = torch.Generator().manual_seed(turn)
    return {
        "layers.0.ssm": torch.randn(1, 4, 8, 16, generator=g),
        "layers.0.conv": torch.randn(1, 24, 3, generator=g).to(torch.bfloat16),
        "layers.1.recurrent": torch.randn(1, 2, 8, 8, generator=g).to(torch.float16),
        "n_tokens": torch.tensor(turn * 10, dtype=torch.int64),
        "mask": torch.rand(5, generator=g) > 0.5,
        "empty": torch.zeros(0, 3),
    }


def page(start: int, end: int) -> Page:
    g = torch.Generator().manual_seed(start * 7919 + end)
    kv = torch.randn(2, end - start, 2, 4, generator=g).to(torch.bfloat16)
    return Page(start, end, {"layers.2.k": kv[0], "layers.2.v": kv[1]})


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def save(store: Store, sid: str, turn: int, tokens_per_turn: int = 10) -> None:
    store.save_turn(
        sid,
        turn,
        events=[Event("user", f"question {turn}"), Event("assistant", f"answer {turn}", {"tokens": turn})],
        recurrent=recurrent_state(turn),
        pages=[page((turn - 1) * tokens_per_turn, turn * tokens_per_turn)],
        n_tokens=turn * tokens_per_turn,
        meta={"turn": turn},
    )


def test_sessions_create_get_list_rename(store: Store) -> None:
    a = store.create_session("first", "/work/a", FP, meta={"model": "tiny"})
    b = store.create_session("second", "/work/b", FP)
    assert store.get_session(a.id).title == "first"
    assert store.get_session(a.id).meta == {"model": "tiny"}
    assert (a.latest_turn, a.n_tokens, a.parent_id) == (None, 0, None)
    store.rename_session(b.id, "renamed")
    assert store.get_session(b.id).title == "renamed"
    assert store.move_session(b.id, "/work/b-moved").workspace == "/work/b-moved"
    assert [store.get_session(x.id).workspace for x in (a, b)] == ["/work/a", "/work/b-moved"]
    # most recently updated first
    assert [s.id for s in store.list_sessions()] == [b.id, a.id]
    save(store, a.id, 1)
    listed = store.list_sessions()
    assert [s.id for s in listed] == [a.id, b.id]
    assert (listed[0].latest_turn, listed[0].n_tokens) == (1, 10)


def test_save_and_load_every_turn_exactly(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    for turn in range(1, 6):
        save(store, sid, turn)
    latest = store.load_snapshot(sid, fingerprint=FP)
    assert (latest.turn, latest.n_tokens, latest.meta) == (5, 50, {"turn": 5})
    assert_same(latest.recurrent, recurrent_state(5))
    for turn in range(1, 6):
        snap = store.load_snapshot(sid, turn)
        assert snap.turn == turn
        assert_same(snap.recurrent, recurrent_state(turn))
        expected = [(i * 10, i * 10 + 10) for i in range(turn)]
        assert [(p[0], p[1]) for p in snap.pages] == expected
        for start, end, tensors in snap.pages:
            assert_same(tensors, page(start, end).tensors)
    assert [t.turn for t in store.turns(sid)] == [1, 2, 3, 4, 5]
    events = store.events(sid)
    assert [(e.turn, e.seq, e.kind, e.content) for e in events[:2]] == [
        (1, 0, "user", "question 1"),
        (1, 1, "assistant", "answer 1"),
    ]
    assert events[3].data == {"tokens": 2}
    assert len(store.events(sid, upto_turn=2)) == 4


def test_loaded_tensors_are_fresh_and_writable(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    save(store, sid, 1)
    first = store.load_snapshot(sid)
    first.recurrent["layers.0.ssm"].add_(1.0)  # changing what we got must not change what is stored
    assert_same(store.load_snapshot(sid).recurrent, recurrent_state(1))


@pytest.mark.parametrize(("window", "sinks"), [(None, 0), (25, 0), (25, 4), (10, 15), (1000, 0), (1, 1)])
def test_window_reads_only_overlapping_pages(store: Store, window: int | None, sinks: int) -> None:
    sid = store.create_session("t", "/w", FP).id
    for turn in range(1, 9):  # pages [0,10), [10,20), ..., [70,80)
        save(store, sid, turn)
    snap = store.load_snapshot(sid, window=window, sinks=sinks)
    n = 80
    expected = [
        (s, s + 10)
        for s in range(0, n, 10)
        if window is None or s < sinks or s + 10 > n - window  # overlaps [0,sinks) or [n-window,n)
    ]
    assert [(p[0], p[1]) for p in snap.pages] == expected
    # an earlier turn's window is relative to that turn's n_tokens
    early = store.load_snapshot(sid, 3, window=15)
    assert [(p[0], p[1]) for p in early.pages] == [(10, 20), (20, 30)]


def test_identical_blobs_are_stored_once(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    same = recurrent_state(0)
    first = store.save_turn(sid, 1, events=[], recurrent=same, n_tokens=0)
    second = store.save_turn(sid, 2, events=[], recurrent=same, n_tokens=0)
    assert first.bytes_written > 0 and first.bytes_deduplicated == 0
    assert second.bytes_written == 0 and second.bytes_deduplicated == first.bytes_written


def test_bytes_per_turn_do_not_grow_with_session_length(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    written = []
    for turn in range(1, 41):
        stats = store.save_turn(
            sid,
            turn,
            events=[Event("user", "x")],
            recurrent=recurrent_state(turn),
            pages=[page((turn - 1) * 10, turn * 10)],
            n_tokens=turn * 10,
        )
        written.append(stats.bytes_written)
    assert written[1] == written[-1]  # turn 2 and turn 40 write exactly as many bytes


def test_pages_are_append_only_and_validated(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    save(store, sid, 1)  # page [0, 10)
    with pytest.raises(InvalidPageError, match="append-only"):
        store.save_turn(sid, 2, events=[], recurrent=recurrent_state(2), pages=[page(5, 20)], n_tokens=20)
    with pytest.raises(InvalidPageError, match="beyond n_tokens"):
        store.save_turn(sid, 2, events=[], recurrent=recurrent_state(2), pages=[page(10, 30)], n_tokens=20)
    with pytest.raises(InvalidPageError, match="overlap"):
        store.save_turn(
            sid, 2, events=[], recurrent=recurrent_state(2), pages=[page(10, 20), page(15, 25)], n_tokens=30
        )
    with pytest.raises(InvalidEventError, match="event kind 'shout' is not one of user, assistant"):
        store.save_turn(sid, 2, events=[{"kind": "shout", "content": "x"}], recurrent={}, n_tokens=20)
    # nothing of the refused turns was stored
    assert [t.turn for t in store.turns(sid)] == [1]
    assert len(store.events(sid)) == 2


def test_turns_only_move_forward(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    save(store, sid, 3)
    for turn in (3, 2):
        with pytest.raises(TurnOrderError, match="already has turn 3; save turn 4"):
            store.save_turn(sid, turn, events=[], recurrent={}, n_tokens=30)


def test_unknown_ids_raise_our_errors(store: Store) -> None:
    with pytest.raises(SessionNotFoundError, match=r"no session 'nope'.*sessions list"):
        store.load_snapshot("nope")
    for call in (
        lambda: store.get_session("nope"),
        lambda: store.delete_session("nope"),
        lambda: store.fork_session("nope", 1),
        lambda: store.events("nope"),
        lambda: store.save_turn("nope", 1, events=[], recurrent={}, n_tokens=0),
        lambda: store.record_file_change("nope", 1, "a.txt", None, b"x"),
    ):
        with pytest.raises(SessionNotFoundError):
            call()
    sid = store.create_session("t", "/w", FP).id
    with pytest.raises(TurnNotFoundError, match="nothing saved yet"):
        store.load_snapshot(sid)
    save(store, sid, 1)
    save(store, sid, 2)
    with pytest.raises(TurnNotFoundError, match=r"has no snapshot of turn 7 \(saved turns: 1, 2\)"):
        store.load_snapshot(sid, 7)
    with pytest.raises(TurnNotFoundError):
        store.fork_session(sid, 7)


def test_wrong_model_is_refused_naming_both_fingerprints(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    save(store, sid, 1)
    other = "b" * 64
    with pytest.raises(FingerprintMismatchError) as err:
        store.load_snapshot(sid, fingerprint=other)
    assert FP in str(err.value) and other in str(err.value)
    assert "load the model it was made with" in str(err.value)


def test_large_blob_tens_of_megabytes(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    g = torch.Generator().manual_seed(0)
    big = {"layers.0.recurrent": torch.randn(30, 96, 192, 24, generator=g)}  # 53 MB fp32, 13 chunks
    stats = store.save_turn(sid, 1, events=[], recurrent=big, n_tokens=1)
    assert stats.bytes_written > 50 * 2**20
    assert_same(store.load_snapshot(sid).recurrent, big)


def test_file_journal_round_trip(store: Store) -> None:
    sid = store.create_session("t", "/w", FP).id
    a = store.record_file_change(sid, 1, "src/a.py", None, b"print(1)\n")
    b = store.record_file_change(sid, 2, "src/a.py", b"print(1)\n", b"print(2)\n")
    c = store.record_file_change(sid, 2, "old.txt", b"\x00binary\xff", None)
    changes = store.file_changes(sid)
    assert [(x.id, x.turn, x.path, x.before, x.after, x.reverted) for x in changes] == [
        (a, 1, "src/a.py", None, b"print(1)\n", False),
        (b, 2, "src/a.py", b"print(1)\n", b"print(2)\n", False),
        (c, 2, "old.txt", b"\x00binary\xff", None, False),
    ]
    assert [x.id for x in store.file_changes(sid, after_turn=1)] == [b, c]
    store.mark_reverted([b, c])
    assert [x.reverted for x in store.file_changes(sid)] == [False, True, True]


def test_append_events_after_a_saved_turn(store: Store) -> None:
    """Events of a turn that was not saved (agent/plan.py's notes) go after a saved turn's events,
    with no snapshot: the chain still verifies, the next turn saves as usual, a fork keeps them."""
    sid = store.create_session("s", "/ws", FP).id
    save(store, sid, 1)
    note = Event("system", "hook Stop: true", {"hook": {"event": "Stop", "exit_code": 0}})
    assert (
        store.append_events(sid, 1, [note, Event("system", "mode", {"mode": {"from": "ask", "to": "plan"}})])
        == 2
    )
    save(store, sid, 2)
    events = store.events(sid)
    assert [(e.turn, e.seq, e.content) for e in events] == [
        (1, 0, "question 1"),
        (1, 1, "answer 1"),
        (1, 2, "hook Stop: true"),
        (1, 3, "mode"),
        (2, 0, "question 2"),
        (2, 1, "answer 2"),
    ]
    assert events[2].data == note.data
    assert store.check(sid).ok and store.load_snapshot(sid).turn == 2
    fork = store.fork_session(sid, 1)
    assert [e.content for e in store.events(fork.id)] == ["question 1", "answer 1", "hook Stop: true", "mode"]
    with pytest.raises(InvalidEventError):
        store.append_events(sid, 2, [Event("note", "not a kind")])
    with pytest.raises(SessionNotFoundError):
        store.append_events("no-such-session", 1, [note])
