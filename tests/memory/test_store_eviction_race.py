"""Two servers on one database (two `Store` objects, as two `hybrid-agent serve` processes have): one
evicts saved prefix states while the other saves new states whose bytes are the same (blobs are
content-addressed, so the save reuses the blobs the eviction is deleting).

What must hold on SQLite and PostgreSQL: no exception reaches either caller, every state the writer was
told is saved loads back and verifies, no row references a missing blob or chunk, no transaction is
rolled back and retried (memory/blobs.py: the save locks the blobs it reuses, the eviction locks the
ones it deletes) and nothing is logged at WARNING or above (serve logs a store error there: "the
database is damaged" would be a lie). The forced interleavings pause one side inside its transaction,
at the point where it has decided which blobs to keep or reuse, until the other side waits for it
(PostgreSQL: seen in pg_stat_activity; SQLite: its single writer lock makes the other side wait).
A save that continues a prefix another one continues already forks that session: the fork racing the
eviction of the session must copy all of its rows or none (memory/store.py `fork_session` locks it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from hybrid_agent.memory import Store, blobs
from hybrid_agent.memory.prefixes import PrefixIndex, PrefixRef
from hybrid_agent.memory.schema import Blob, BlobChunk, SnapshotRow, StatePageRow
from sqlalchemy import func, select, union_all

WIDTH = 64  # floats a token in the test's pages
WAIT_S = 20.0  # bound on every wait for the other thread


def _state(
    i: int, n: int = 4
) -> tuple[dict[str, torch.Tensor], list[tuple[int, int, dict[str, torch.Tensor]]]]:
    """State `i`: the same bytes whoever saves it (one recurrent blob, one page blob)."""
    rec = {"h": torch.full((256,), float(i))}
    return rec, [(0, n, {"k": torch.arange(n * WIDTH, dtype=torch.float32) + 1000.0 * i})]


def _save(index: PrefixIndex, digest: str, i: int, base: PrefixRef | None = None) -> PrefixRef:
    rec, pages = _state(i)
    if base is not None:  # continues state i by two tokens; every page given (the base may be gone)
        rec = {"h": rec["h"] + 0.5}
        pages = [*pages, (4, 6, {"k": torch.arange(2 * WIDTH, dtype=torch.float32) - 1000.0 * i})]
    n = pages[-1][1]
    return index.save(digest, base=base, recurrent=rec, pages=pages, n_tokens=n, fingerprint="fp")


def _expected(i: int, continued: bool) -> torch.Tensor:
    rec, _ = _state(i)
    return rec["h"] + (0.5 if continued else 0.0)


def _verify(index: PrefixIndex, saved: dict[int, tuple[PrefixRef, bool]]) -> None:
    """Each saved state loads (chain and blob digests verified) with the bytes that were saved."""
    for i, (ref, continued) in saved.items():
        snap = index.load(ref, fingerprint="fp")
        assert torch.equal(snap.recurrent["h"], _expected(i, continued)), i
        k = torch.cat([p[2]["k"] for p in snap.pages])
        assert torch.equal(k[: 4 * WIDTH], _state(i)[1][0][2]["k"]), i
        assert k.numel() == (6 if continued else 4) * WIDTH


def _dangling(store: Store) -> list[str]:
    """Blobs that a snapshot or page row references but that are missing or lack chunks."""

    def do(s: Any) -> list[str]:
        refs = union_all(
            select(SnapshotRow.recurrent_blob.label("sha")), select(StatePageRow.blob_sha256.label("sha"))
        ).subquery()
        chunks = (
            select(func.count()).where(BlobChunk.blob_sha256 == refs.c.sha).correlate(refs).scalar_subquery()
        )
        q = (
            select(refs.c.sha)
            .distinct()
            .join(Blob, Blob.sha256 == refs.c.sha, isouter=True)
            .where((Blob.sha256.is_(None)) | (Blob.n_chunks != chunks))
        )
        return list(s.scalars(q))

    return store._in_read(do, "finding dangling blobs")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="hybrid_agent")
    return caplog


def _assert_quiet(logs: pytest.LogCaptureFixture) -> None:
    records = logs.records
    loud = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert not loud, loud
    retried = [r.getMessage() for r in records if "rolled back and retried" in r.getMessage()]
    assert not retried, retried


def _race(store_url: str, iterations: int, logs: pytest.LogCaptureFixture) -> None:
    """Per iteration: server A saves victim state i, then evicts it while server B saves state i under
    another digest (odd i: as a continuation of A's victim, which may be evicted under it)."""
    with Store(store_url) as one, Store(store_url) as two:
        evictor, writer = PrefixIndex(one), PrefixIndex(two)
        victims: dict[int, PrefixRef] = {}
        saved: dict[int, tuple[PrefixRef, bool]] = {}
        errors: list[BaseException] = []
        freed = 0
        go = threading.Barrier(2, timeout=WAIT_S)

        def evicting() -> None:
            nonlocal freed
            try:
                for i in range(iterations):
                    victims[i] = _save(evictor, f"victim-{i}", i)
                    go.wait()
                    freed += evictor.evict([f"victim-{i}"])
            except BaseException as exc:
                errors.append(exc)
                go.abort()

        def saving() -> None:
            try:
                for i in range(iterations):
                    go.wait()
                    base = victims[i] if i % 2 else None
                    saved[i] = (_save(writer, f"saved-{i}", i, base), base is not None)
            except BaseException as exc:
                errors.append(exc)
                go.abort()

        threads = [threading.Thread(target=f) for f in (evicting, saving)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60 + iterations)
        assert not any(t.is_alive() for t in threads), "a server never finished"
        assert not errors, errors
        assert len(saved) == iterations
        assert evictor.find([f"victim-{i}" for i in range(iterations)]) is None
        _verify(evictor, saved)  # read through the other server, too
        assert _dangling(one) == []
        report = one.check()
        assert report.ok, report.problems[:5]
        # A victim's two blobs went with it (and the save wrote them again) or stayed for the save;
        # either way none is left that nothing references.
        assert freed <= 2 * iterations
        assert one.collect_garbage() == 0
    _assert_quiet(logs)


def test_evictions_racing_saves_of_the_same_bytes(store_url: str, logs: pytest.LogCaptureFixture) -> None:
    _race(store_url, 30, logs)


@pytest.mark.slow
def test_evictions_racing_saves_of_the_same_bytes_many_times(
    store_url: str, logs: pytest.LogCaptureFixture
) -> None:
    _race(store_url, 300, logs)


# -- forced interleavings ---------------------------------------------------------------------------


def _waits_for_lock(store_url: str) -> Callable[[], bool]:
    """Whether a transaction on the database is waiting for a row lock (PostgreSQL), or a fixed pause
    (SQLite: its write lock makes the other side wait anyway; the outcome does not depend on it)."""
    if not store_url.startswith("postgresql"):
        until = time.monotonic() + 0.3
        return lambda: time.monotonic() > until
    q = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )

    def waiting() -> bool:
        engine = sa.create_engine(store_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql(q).scalar() or 0) > 0
        finally:
            engine.dispose()

    return waiting


def _pause_until(ready: Callable[[], bool], other: threading.Thread) -> None:
    """Hold this transaction until `ready()` (the other side waits for it) or the other side ended."""
    deadline = time.monotonic() + WAIT_S
    while not ready() and other.is_alive():
        assert time.monotonic() < deadline, "the other server neither waited nor finished"
        time.sleep(0.01)


def _interleave(store_url: str, pause_in: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, PrefixRef]:
    """Server A evicts a victim state while server B saves the same bytes; `pause_in` ("evict" or
    "save") is the side held inside its transaction, once it has decided which blobs to delete or
    reuse, until the other side waits for it. Returns the blobs the eviction freed and B's state."""
    with Store(store_url) as one, Store(store_url) as two:
        evictor, writer = PrefixIndex(one), PrefixIndex(two)
        _save(evictor, "victim", 7)
        threads: dict[str, threading.Thread] = {}
        out: dict[str, Any] = {}
        paused = threading.Event()

        def hold(real: Callable[..., Any], side: str) -> Callable[..., Any]:
            def held(*args: Any, **kwargs: Any) -> Any:
                result = real(*args, **kwargs)
                if threading.current_thread() is threads[side] and not paused.is_set():
                    paused.set()
                    other = threads["save" if side == "evict" else "evict"]
                    other.start()
                    _pause_until(_waits_for_lock(store_url), other)
                return result

            return held

        if pause_in == "evict":  # after the eviction counted the references of the blobs it locked
            monkeypatch.setattr(blobs, "referenced", hold(blobs.referenced, "evict"))
        else:  # after the save locked (or wrote) every blob it uses
            monkeypatch.setattr(blobs, "write_blobs", hold(blobs.write_blobs, "save"))

        def run(side: str, fn: Callable[[], Any]) -> None:
            try:
                out[side] = fn()
            except BaseException as exc:
                out[side] = exc

        threads["evict"] = threading.Thread(target=run, args=("evict", lambda: evictor.evict(["victim"])))
        threads["save"] = threading.Thread(target=run, args=("save", lambda: _save(writer, "saved", 7)))
        threads[pause_in].start()
        for side in (pause_in, "save" if pause_in == "evict" else "evict"):
            threads[side].join(timeout=2 * WAIT_S)
            assert not threads[side].is_alive(), f"{side} never finished"
        assert paused.is_set()
        for side in ("evict", "save"):
            assert not isinstance(out[side], BaseException), out[side]
        ref = out["save"]
        assert evictor.find(["victim"]) is None and evictor.get("saved") == ref
        _verify(evictor, {7: (ref, False)})
        assert _dangling(one) == []
        assert one.check().ok
        return int(out["evict"]), ref


def test_an_eviction_that_locked_first_deletes_and_the_save_writes_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    freed, _ = _interleave(store_url, "evict", monkeypatch)
    # The eviction found both blobs unreferenced and deleted them; the save, which had waited for it,
    # stored them again (not an error, not a retry).
    assert freed == 2
    _assert_quiet(logs)


def test_a_save_that_locked_first_keeps_its_blobs_from_the_eviction(
    store_url: str, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    freed, _ = _interleave(store_url, "save", monkeypatch)
    assert freed == 0  # the eviction waited for the save, then saw its references
    _assert_quiet(logs)


def test_a_fork_of_a_prefix_session_racing_its_eviction_copies_all_of_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    # The saved state continues "victim" (turn 1), which "victim+" continues already (turn 2): the save
    # forks the session at turn 1 while the other server evicts both. The fork is held after it read the
    # parent's rows; the eviction must wait for it, not delete them from under it.
    from hybrid_agent.memory import store as store_module

    with Store(store_url) as one, Store(store_url) as two:
        evictor, writer = PrefixIndex(one), PrefixIndex(two)
        victim = _save(evictor, "victim", 7)
        _save(evictor, "victim+", 7, base=victim)
        threads: dict[str, threading.Thread] = {}
        out: dict[str, Any] = {}

        def run(side: str, fn: Callable[[], Any]) -> None:
            try:
                out[side] = fn()
            except BaseException as exc:
                out[side] = exc

        paused = threading.Event()
        real_verify = store_module.verify_chain

        def held(*args: Any, **kwargs: Any) -> Any:
            rows = real_verify(*args, **kwargs)
            if threading.current_thread() is threads["save"] and not paused.is_set():
                paused.set()
                threads["evict"].start()
                _pause_until(_waits_for_lock(store_url), threads["evict"])
            return rows

        monkeypatch.setattr(store_module, "verify_chain", held)
        pages = [*_state(7)[1], (4, 6, {"k": torch.full((2 * WIDTH,), 3.0)})]
        threads["evict"] = threading.Thread(
            target=run, args=("evict", lambda: evictor.evict(["victim", "victim+"]))
        )
        threads["save"] = threading.Thread(
            target=run,
            args=(
                "save",
                lambda: writer.save(
                    "saved",
                    base=victim,
                    recurrent={"h": torch.ones(256)},
                    pages=pages,
                    n_tokens=6,
                    fingerprint="fp",
                ),
            ),
        )
        threads["save"].start()
        for side in ("save", "evict"):
            threads[side].join(timeout=2 * WAIT_S)
            assert not threads[side].is_alive(), f"{side} never finished"
        assert paused.is_set()
        for side in ("evict", "save"):
            assert not isinstance(out[side], BaseException), out[side]
        ref = out["save"]
        # Stored as turn 2 of a fork (its turn 1 shares the victim's blobs), not whole: the eviction
        # freed only what victim+ alone used (its recurrent state and page).
        assert ref.session_id != victim.session_id and ref.turn == 2
        assert out["evict"] == 2
        snap = writer.load(ref, fingerprint="fp")
        assert torch.equal(snap.recurrent["h"], torch.ones(256))
        k = torch.cat([p[2]["k"] for p in snap.pages])
        assert torch.equal(k, torch.cat([pages[0][2]["k"], pages[1][2]["k"]]))
        assert evictor.count() == 1 and _dangling(one) == []
        report = one.check()
        assert report.ok, report.problems[:5]
    _assert_quiet(logs)
