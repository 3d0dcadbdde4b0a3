"""Continuous batching for `hybrid-agent serve`: the scheduler's thread decodes every running request in
one batch (model/batch.py), admitting new ones and letting finished ones go between steps.

One step: each row takes the token chosen for it (stop strings and tool calls end a row, as in
agent/serve_scheduler.py's `Row.take`), the batch feeds all of them at once, and each row still going
chooses its next token from its own logits (its own temperature). A joining request is restored and
prefilled alone on the engine first (`Scheduler.begin`, the engine's fast path), then its state joins
the batch; a row that ends leaves with its state, from which its answer's state is saved. A row whose
client went away leaves at the next step. Rows join and leave by repacking the batch (`BatchState`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from hybrid_agent.agent.serve_api import failure
from hybrid_agent.model.batch import BatchState
from hybrid_agent.model.state import ModelState, Page

# The scheduler's `Scheduler`, `Job` and `Row` (agent/serve_scheduler.py, which imports this module).
Scheduler = Job = Row = Any


def _snapshotter(state: ModelState) -> Any:
    """`ModelEngine.snapshot` for a row's own state: recurrent tensors and the cache pages since."""

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
        self.batch: BatchState | None = None

    def _release(self) -> None:
        self.s.release()

    def _fail(self, job: Job, exc: Exception) -> None:
        job.emit("error", failure(exc))

    def _sample(self, row: Row, logits: torch.Tensor) -> int:
        from hybrid_agent.model.decode.sampling import SamplingParams, sample

        params = SamplingParams(temperature=row.job.temperature)
        eng = self.engine
        vocab = getattr(eng, "_vocab_size", None)
        return int(sample(logits[None], params, getattr(eng, "_generator", None), vocab_size=vocab)[0])

    def run(self) -> None:
        while True:
            jobs = self.s.next_jobs(len(self.rows))
            if jobs is None:
                return
            cancelled = any(row.job.cancelled.is_set() for row in self.rows)
            states: list[ModelState] = []
            if (jobs or cancelled) and self.batch is not None:  # the batch is repacked: rows come out
                states = [self.batch.row(b) for b in range(self.batch.size)]
            changed = False
            for job in jobs:
                if job.cancelled.is_set():
                    self._release()
                    continue
                try:
                    row = self.s.begin(job)
                    first = self.engine.next_token()
                    state = self.engine.state.clone()
                except Exception as exc:  # this request fails, the others go on
                    self._fail(job, exc)
                    self._release()
                    continue
                self.rows.append(row)
                self.next.append(first)
                states.append(state)
                changed = True
            keep = [b for b, row in enumerate(self.rows) if not row.job.cancelled.is_set()]
            if len(keep) < len(self.rows):  # clients that went away: their rows leave
                for _ in range(len(self.rows) - len(keep)):
                    self._release()
                self.rows = [self.rows[b] for b in keep]
                self.next = [self.next[b] for b in keep]
                states = [states[b] for b in keep]
                changed = True
            if changed:
                self.batch = BatchState(states) if states else None
            if self.batch is None:
                continue
            try:
                self._step()
            except Exception as exc:  # a model error fails every running row; the server goes on
                for row in self.rows:
                    self._fail(row.job, exc)
                    self._release()
                self.rows, self.next, self.batch = [], [], None

    def _step(self) -> None:
        assert self.batch is not None
        ended = [row.take(tok) for row, tok in zip(self.rows, self.next, strict=True)]
        t0 = time.perf_counter()
        logits = self.batch.step(self.engine.model, self.next)  # (B, V)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)  # the step's time, not its launch's
        self.s.metrics.inc("decode_seconds_total", time.perf_counter() - t0)
        self.s.peak_batch = max(self.s.peak_batch, self.batch.size)
        self.s.metrics.inc("decode_steps_total")
        self.s.metrics.inc("batch_rows_total", self.batch.size)
        leaving = [
            b for b, row in enumerate(self.rows) if ended[b] or len(row.generated) >= row.job.max_new_tokens
        ]
        for b, row in enumerate(self.rows):
            if b not in leaving:
                self.next[b] = self._sample(row, logits[b])
        if not leaving:
            return
        states = [self.batch.row(b) for b in range(self.batch.size)]
        for b in leaving:
            row = self.rows[b]
            try:
                row.job.emit("done", self.s.end(row, _snapshotter(states[b])))
            except Exception as exc:
                self._fail(row.job, exc)
            self._release()
        stay = [b for b in range(len(self.rows)) if b not in leaving]
        self.rows = [self.rows[b] for b in stay]
        self.next = [self.next[b] for b in stay]
        self.batch = BatchState([states[b] for b in stay]) if stay else None
