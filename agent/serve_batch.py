"""Continuous batching for `hybrid-agent serve`: the scheduler's thread decodes every running request in
one batch, admitting new ones and letting finished ones go between steps. The batch is the decode
engine's per-row slots (one captured step for every mix of lengths) where the engine runs the model, else
the model's own batched forward (model/batch.py); agent/serve_rows.py has both.

One step: each row takes the token chosen for it (stop strings and tool calls end a row, as in
agent/serve_scheduler.py's `Row.take`), the batch feeds all of them at once, and each row still going
chooses its next token from its own logits (its own sampling parameters, agent/serve_sampling.py). A
joining request is restored and prefilled alone on the engine first (`Scheduler.begin`, the engine's
fast path), then its state joins the batch; a row that ends leaves with its state, from which its
answer's state is saved. A row whose client went away leaves at the next step.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from hybrid_agent.agent.serve_api import failure
from hybrid_agent.agent.serve_rows import EngineRows, ModelRows, make_rows
from hybrid_agent.model.state import ModelState, Page

# The scheduler's `Scheduler`, `Job` and `Row` (agent/serve_scheduler.py, which imports this module).
Scheduler = Job = Row = Any


def _snapshotter(state: ModelState) -> Any:
    """`ModelEngine.snapshot` for a row's own state: recurrent tensors and the cache pages since, as
    CPU copies (recurrent_tensors() clones and cache_range() gathers: never views of the live state)."""

    def snapshot(since: int) -> tuple[dict[str, torch.Tensor], list[Page]]:
        recurrent = {k: v.detach().cpu() for k, v in state.recurrent_tensors().items()}
        end = int(state.n_tokens)
        pages = []
        if end > since:
            tensors = {k: v.detach().cpu() for k, v in state.cache_range(since, end).items()}
            if tensors:
                pages.append(Page(since, end, tensors))
        return recurrent, pages

    return snapshot


class BatchLoop:
    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.engine = scheduler.engine
        self.rows: list[Row] = []
        self.next: list[int] = []  # each row's token, chosen and not yet fed
        self.batch: EngineRows | ModelRows | None = None  # where the rows' states are (agent/serve_rows.py)

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
            idx = torch.tensor(greedy, device=logits.device)
            vocab = getattr(self.engine, "_vocab_size", None)
            picks = sample(logits[idx], SamplingParams(temperature=0.0), vocab_size=vocab).tolist()
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
        while True:
            jobs = self.s.next_jobs(len(self.rows))
            if jobs is None:
                return
            gone = [b for b, row in enumerate(self.rows) if row.job.cancelled.is_set()]
            if gone:  # clients that went away: their rows leave
                self._rows().leave(gone)
                for _ in gone:
                    self._release()
                self.rows = [row for b, row in enumerate(self.rows) if b not in gone]
                self.next = [tok for b, tok in enumerate(self.next) if b not in gone]
            states: list[ModelState] = []
            for job in jobs:
                if job.cancelled.is_set():
                    self._release()
                    continue
                try:
                    row = self.s.begin(job)
                    first = row.sampler.choose(self.engine.last_logits)
                    state = self.engine.state.clone()
                except Exception as exc:  # this request fails, the others go on
                    self._fail(job, exc)
                    self._release()
                    continue
                self.rows.append(row)
                self.next.append(first)
                states.append(state)
            try:
                if states:
                    self._rows().join(states)
                if self.rows:
                    self._step()
            except Exception as exc:  # a model error fails every running row; the server goes on
                for row in self.rows:
                    self._fail(row.job, exc)
                    self._release()
                self.rows, self.next, self.batch = [], [], None

    def _step(self) -> None:
        batch = self._rows()
        ended = [row.take(tok) for row, tok in zip(self.rows, self.next, strict=True)]
        t0 = time.perf_counter()
        logits = batch.step(self.next)  # (B, V)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)  # the step's time, not its launch's
        self.s.metrics.inc("decode_seconds_total", time.perf_counter() - t0)
        self.s.peak_batch = max(self.s.peak_batch, len(self.rows))
        self.s.metrics.inc("decode_steps_total")
        self.s.metrics.inc("batch_rows_total", len(self.rows))
        leaving = [
            b for b, row in enumerate(self.rows) if ended[b] or len(row.generated) >= row.job.max_new_tokens
        ]
        self._choose([b for b in range(len(self.rows)) if b not in leaving], logits)
        if not leaving:
            return
        states = batch.leave(leaving)
        for b, state in zip(leaving, states, strict=True):
            row = self.rows[b]
            try:
                row.job.emit("done", self.s.end(row, _snapshotter(state)))
            except Exception as exc:
                self._fail(row.job, exc)
            self._release()
        self.rows = [row for b, row in enumerate(self.rows) if b not in leaving]
        self.next = [tok for b, tok in enumerate(self.next) if b not in leaving]
