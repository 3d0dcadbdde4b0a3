"""Continuous batching for `hybrid-agent serve`: the scheduler's thread decodes every running request in
one batch, admitting new ones and letting finished ones go between steps. The batch is the decode
engine's per-row slots (one captured step for every mix of lengths) where the engine runs the model, else
the model's own batched forward (model/batch.py); agent/serve_rows.py has both.

A joining row's prompt ends in the batch: its last token (and a forced call's markup) is fed by the
batch's step rather than by a forward of its own on the engine (`Scheduler.begin(defer=True)`), and its
first token is chosen from that step's logits. When the part of its prompt not restored from a saved
state is short (`--join-feed-tokens`), the steps feed all of it, one token each while the other rows
decode (on a GPU a step costs about the same with a row more), and the prompt's state is saved from the row's
state in the batch once it holds all but the prompt's last token (`_save_prompts`).

One step: the batch feeds each row's chosen token at once; while the device runs that step, each row
takes its token on the host (stop strings and tool calls end a row, as in agent/serve_scheduler.py's
`Row.take`) and the events go out; then each row still going chooses its next token from its own
logits (its own sampling parameters, agent/serve_sampling.py). A
joining request is restored (and a longer unrestored part prefilled) alone on the engine first
(`Scheduler.begin`, the engine's fast path), then its state joins the batch; a row that ends leaves
with its state, from which its answer's state is saved. A row whose client went away leaves at the
next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import torch
from hybrid_agent.agent.serve_api import failure
from hybrid_agent.agent.serve_rows import EngineRows, ModelRows, make_rows, wait_for_model
from hybrid_agent.agent.serve_snapshots import of_state
from hybrid_agent.model.state import ModelState
from hybrid_agent.model.switches import env_switch

# `Scheduler.begin`'s `feed` with --join-together: every unrestored prompt part is left to the batch.
TOGETHER_FEED = 1 << 62
# 0: each row takes its token before the step is queued rather than while it runs (`BatchLoop._step`),
# the order before the overlap, kept to measure it against (scripts/device_bench_serve_start.sh).
STEP_OVERLAP_ENV = "HYBRID_AGENT_STEP_OVERLAP"
# The scheduler's `Scheduler`, `Job` and `Row` (agent/serve_scheduler.py, which imports this module).
Scheduler = Job = Row = Any


def _deliver(items: list[tuple[Job, tuple[str, Any]]]) -> None:
    for job, event in items:
        job.events.put_nowait(event)


class Outbox:
    """Events of many jobs, handed to the HTTP side's loop in one call per `flush` instead of one per
    event: a batched step makes one event per row, and each hand-off wakes the loop's thread (a write
    to its self-pipe), which then competes with the model's thread for the interpreter. Each job's
    events keep their order."""

    def __init__(self) -> None:
        self.items: list[tuple[Job, tuple[str, Any]]] = []

    def add(self, job: Job, event: tuple[str, Any]) -> None:
        self.items.append((job, event))

    def flush(self) -> None:
        items, self.items = self.items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, tuple[str, Any]]]] = {}
        for job, event in items:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is gone: nobody is listening
                loop.call_soon_threadsafe(_deliver, group)


class BatchLoop:
    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.engine = scheduler.engine
        self.rows: list[Row] = []
        self.next: list[int] = []  # each row's token, chosen and not yet fed
        self.batch: EngineRows | ModelRows | None = None  # where the rows' states are (agent/serve_rows.py)
        self.outbox = Outbox()  # the rows' events, handed over once per step
        self._builds: tuple[Any, int] = (None, 0)  # the batch and its `EngineRows.builds` as last counted
        self.overlap = env_switch(STEP_OVERLAP_ENV) is not False

    def _release(self) -> None:
        self.s.release()

    def _fail(self, job: Job, exc: Exception) -> None:
        job.emit("error", failure(exc))

    def _choose(self, rows: list[int], logits: torch.Tensor) -> None:
        """The next token of each of `rows`: the greedy ones in one argmax and one read back (not one
        sync per row: at 32 rows those cost more than the step), the others each by its own sampler
        (agent/serve_sampling.py: its parameters, generator and penalties)."""
        from hybrid_agent.model.decode.sampling import SamplingParams, sample

        greedy = [b for b in rows if self.rows[b].job.sampling.plain_greedy]
        if greedy:
            # every row greedy (the usual case): no index to copy to the device and wait for
            some = logits
            if len(greedy) < len(logits):
                some = logits[torch.tensor(greedy, device=logits.device)]
            vocab = getattr(self.engine, "_vocab_size", None)
            picks = sample(some, SamplingParams(temperature=0.0), vocab_size=vocab).tolist()
            for b, tok in zip(greedy, picks, strict=True):
                self.next[b] = int(tok)
        for b in rows:
            if b not in greedy:
                self.next[b] = self.rows[b].sampler.choose(logits[b])

    def _rows(self) -> EngineRows | ModelRows:
        if self.batch is None:
            self.batch = make_rows(self.engine, self.s.max_concurrent)
            self.s.batch_path = self.batch.kind
        return self.batch

    def run(self) -> None:
        self.warm()
        while True:
            jobs = self.s.next_jobs(len(self.rows))
            if jobs is None:
                return
            for job in jobs:
                job.outbox = self.outbox
            try:
                self._iterate(jobs)
            finally:
                self.outbox.flush()

    def warm(self) -> None:
        """Before the first request: build the batch's buffers and run its step once on empty slots, so
        that the one-time costs (allocation, kernel compiles, the CUDA graph's capture) are not paid
        inside a request (agent/serve_rows.py `EngineRows.warm`)."""
        try:
            batch = self._rows()
            t0 = time.perf_counter()
            if batch.warm():
                self.s.metrics.inc("warmup_seconds_total", time.perf_counter() - t0)
        except Exception:  # the first request builds the batch again and reports what fails
            self.batch = None
        self._note_builds()

    def _iterate(self, jobs: list[Job]) -> None:
        gone = [b for b, row in enumerate(self.rows) if row.job.cancelled.is_set()]
        if gone:  # clients that went away: their rows leave
            self._rows().leave(gone)
            for _ in gone:
                self._release()
            self.rows = [row for b, row in enumerate(self.rows) if b not in gone]
            self.next = [tok for b, tok in enumerate(self.next) if b not in gone]
        states: list[ModelState] = []
        # `--join-together`: every unrestored prompt part goes to `row.pending`; the long ones are
        # prefilled together after this loop (agent/serve_together.py), the short ones fed by the step.
        together = self.s.join_together and len(jobs) > 1
        feed = TOGETHER_FEED if together else self.s.join_feed_tokens
        grouped: list[Row] = []
        for job in jobs:
            if job.cancelled.is_set():
                self._release()
                continue
            self.s.sync()  # with `sync_phases`: earlier work is not counted in this join's phases
            t0 = time.perf_counter()
            try:
                row = self.s.begin(job, defer=True, feed=feed)
                if together and row.prompt_save_in > self.s.join_feed_tokens:
                    grouped.append(row)
                    continue
                self.s.metrics.inc("step_prompt_tokens_total", row.prompt_save_in)  # 0 unless step-fed
                t = time.perf_counter()
                if row.pending:  # the batch's step feeds the prompt's last token
                    first, row.feeding = row.pending.pop(0), True
                else:
                    first = row.sampler.choose(self.engine.last_logits)
                t = self.s.lap("setup", t)
                batch = self._rows()
                # `row.start` is read once, here: the state built from it is the row's from now on
                start, row.start = row.start, None
                if start is None:
                    state = self.engine.state  # the engine's live state, the next `begin` changes it
                else:  # a saved prefix not restored into the engine: straight into a slot, or built
                    t1 = time.perf_counter()  # once for the model's batch to copy
                    if isinstance(batch, EngineRows):
                        batch.join_parts(start.recurrent, start.pages)
                        state = None
                    else:
                        state = batch.state(start.recurrent, start.pages)
                    self.s.metrics.inc("restore_seconds_total", time.perf_counter() - t1)
                    t = self.s.lap("restore", t)
                if isinstance(batch, EngineRows):  # a slot copies the state in as it joins: no copy first
                    if state is not None:
                        batch.join([state])
                    state = None
                elif start is None:  # the model's batch is repacked once, after every admission
                    state = state.clone()
                self.s.lap("load", t)
            except Exception as exc:  # this request fails, the others go on
                self._fail(job, exc)
                self._release()
                continue
            finally:
                self.s.metrics.inc("join_seconds_total", time.perf_counter() - t0)
            self.rows.append(row)
            self.next.append(first)
            if state is not None:
                states.append(state)
        try:
            if grouped:  # a failing group fails its own requests; a failing join, as a step does, all
                states += self._join_together(grouped)
            if states:
                self._rows().join(states)
            if self.rows:
                self._step()
        except Exception as exc:  # a model error fails every running row; the server goes on
            for row in self.rows:
                self._fail(row.job, exc)
                self._release()
            self.rows, self.next, self.batch = [], [], None
        self._note_builds()

    def _join_together(self, rows: list[Row]) -> list[ModelState]:
        """Rows whose long unrestored prompt parts are prefilled together, by saved prefix
        (agent/serve_together.py), then joined as the step-fed rows are; the states for the model's
        batch to take (the engine's slots take theirs here). A group that fails fails its requests."""
        out: list[ModelState] = []
        groups: dict[int, list[Row]] = {}
        for row in rows:
            groups.setdefault(id(row.start.entry) if row.start is not None else 0, []).append(row)
        for group in groups.values():
            self.s.sync()
            t0 = time.perf_counter()
            try:
                got = self._prefill_group(group)
            except Exception as exc:
                for row in group:
                    self._fail(row.job, exc)
                    self._release()
                continue
            finally:
                self.s.metrics.inc("join_seconds_total", time.perf_counter() - t0)
            for row, state in got:
                first, row.feeding = row.pending.pop(0), True
                self.rows.append(row)
                self.next.append(first)
                out.append(state)
        batch = self._rows()
        if isinstance(batch, EngineRows) and out:  # a slot copies the state in as it joins
            batch.join(out)
            return []
        return out

    def _prefill_group(self, group: list[Row]) -> list[tuple[Row, ModelState]]:
        """One group's rounds (agent/serve_together.py), then each prompt's state saved once it holds
        all but the prompt's last token."""
        from hybrid_agent.agent.serve_together import prefill_rows

        batch, model, k = self._rows(), self.engine.model, self.s.join_feed_tokens
        start = group[0].start
        t = time.perf_counter()
        base = model.new_state() if start is None else batch.state(start.recurrent, start.pages)
        t = self.s.lap("restore", t)
        state = {id(row): base for row in group}
        while active := [row for row in group if row.prompt_save_in > k]:
            m = min(row.prompt_save_in for row in active)
            new = prefill_rows(model, [state[id(row)] for row in active], [row.pending[:m] for row in active])
            for row, st in zip(active, new, strict=True):
                state[id(row)], row.pending, row.prompt_save_in = st, row.pending[m:], row.prompt_save_in - m
            self.s.metrics.inc("together_prompt_tokens_total", m * len(active))
        t = self.s.lap("prefill", t)
        for row in group:
            row.start = None
            self.s.metrics.inc("step_prompt_tokens_total", row.prompt_save_in)  # what the steps feed
            if row.prompt_save_in == 0:
                self.s.save_prompt(row, of_state(state[id(row)]))
        self.s.lap("save", t)
        return [(row, state[id(row)]) for row in group]

    def _note_builds(self) -> None:
        """Count the batch buffers built since the last call (`EngineRows.builds`) as a metric."""
        builds = getattr(self.batch, "builds", 0)
        seen = self._builds[1] if self._builds[0] is self.batch else 0  # a new batch counts from 0
        if builds > seen:
            self.s.metrics.inc("batch_builds_total", builds - seen)
        self._builds = (self.batch, builds)

    def _step(self) -> None:
        batch = self._rows()
        if not self.overlap:  # HYBRID_AGENT_STEP_OVERLAP=0: the host's work before the step, to compare
            t = time.perf_counter()
            ended = self._take()
            self.s.metrics.inc("rows_seconds_total", time.perf_counter() - t)
        t0 = time.perf_counter()
        logits = batch.step(self.next)  # (B, V), queued on the device
        # While the device runs the step, the host takes each row's token (detokenise, stop strings,
        # tool-call markers, events) and hands the events over: none of it reads the device, and a row
        # whose token ends its answer was fed that token anyway (it leaves with its state after the step).
        t1 = time.perf_counter()
        if self.overlap:
            ended = self._take()
            self.outbox.flush()
        t2 = time.perf_counter()
        wait_for_model(logits.device)  # the step's time, not its launch's
        t3 = time.perf_counter()
        self.s.metrics.inc("decode_seconds_total", (t1 - t0) + (t3 - t2))
        self.s.metrics.inc("rows_seconds_total", t2 - t1)
        self.s.peak_batch = max(self.s.peak_batch, len(self.rows))
        self.s.metrics.inc("decode_steps_total")
        self.s.metrics.inc("batch_rows_total", len(self.rows))
        self._save_prompts(batch)
        leaving = [
            b
            for b, row in enumerate(self.rows)
            if not row.feeding and (ended[b] or len(row.generated) >= row.job.max_new_tokens)
        ]
        choose = []
        for b, row in enumerate(self.rows):
            if row.pending:  # still feeding its prompt: its logits are not read
                self.next[b] = row.pending.pop(0)
            elif b not in leaving:
                row.feeding = False
                choose.append(b)
        self._choose(choose, logits)
        if not leaving:
            return
        states = batch.leave(leaving)
        for b, state in zip(leaving, states, strict=True):
            row = self.rows[b]
            try:
                row.job.emit("done", self.s.end(row, of_state(state)))
            except Exception as exc:
                self._fail(row.job, exc)
            self._release()
        self.rows = [row for b, row in enumerate(self.rows) if b not in leaving]
        self.next = [tok for b, tok in enumerate(self.next) if b not in leaving]

    def _take(self) -> list[bool]:
        """Each row takes the token it is fed (a row still feeding its prompt takes none); True where
        that token ends the row's answer (agent/serve_scheduler.py `Row.take`)."""
        return [not row.feeding and row.take(tok) for row, tok in zip(self.rows, self.next, strict=True)]

    def _save_prompts(self, batch: EngineRows | ModelRows) -> None:
        """After a step: the prompt's state of each row whose step-fed prompt now holds all but its last
        token (`Row.prompt_save_in`), saved from the row's state in the batch. A row whose save fails
        gets the error and leaves at the next iteration; the others go on."""
        for b, row in enumerate(self.rows):
            if row.prompt_save_in <= 0:
                continue
            row.prompt_save_in -= 1
            if row.prompt_save_in:
                continue
            try:
                self.s.save_prompt(row, of_state(batch.view(b)))
            except Exception as exc:
                self._fail(row.job, exc)
                row.job.cancelled.set()  # answered with the error: it leaves like a client that went away
