"""The model side of `hybrid-agent serve`: one thread owns the engine (docs/design.md, "Who runs the
model") and runs the admitted requests; the HTTP side (agent/serve_app.py) talks to it through jobs.

A request's run: find the longest saved prefix of its rendered tokens (agent/serve_prefix.py), restore
that state (or start empty), prefill only the rest, save the state at the end of the prompt, decode
(every generated token is fed back, the stop token too, as in agent/loop.py), and when the answer as the
client will send it back renders to exactly the tokens decoded, save the state at its end as well: the
next request of the conversation starts there.

Up to `max_concurrent` requests decode together in one batch (agent/serve_batch.py; the decode
engine's per-row slots or model/batch.py, agent/serve_rows.py: each row its own position, recurrent
state and cache length; rows join and leave between steps). A joining request is restored on the
engine; the rest of its prompt is prefilled alone there but for its last token, which the batch's step
feeds, or, when that rest is at most `join_feed_tokens` long, all of it is fed by the batch's steps (its
prompt state then saved from the batch). A model the batch cannot run (a window, MLA layers), or
`max_concurrent` 1, runs one request at a time on the engine.
`max_concurrent + max_queue` bounds how many are admitted (more get 429) and `queue_depth` is how many
wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybrid_agent.agent.serve_api import RequestError, assistant_segment, failure, forced_opening
from hybrid_agent.agent.serve_metrics import Metrics
from hybrid_agent.agent.serve_prefix import Entry, Hit, PrefixCache
from hybrid_agent.agent.serve_rows import wait_for_model
from hybrid_agent.agent.serve_sampling import RowSampler, Sampling, StopText
from hybrid_agent.agent.serve_snapshots import Snapshotter, of_engine
from hybrid_agent.agent.serve_snapshots import snapshot as take_snapshot
from hybrid_agent.model.chat import Segment
from hybrid_agent.model.switches import env_switch

# On ("1"): the join phases' times (`join_*_seconds_total`) are the device's: a sync at each phase's end.
SYNC_PHASES_ENV = "HYBRID_AGENT_SERVE_SYNC_PHASES"


@dataclass
class Result:
    content: str
    calls: list[tuple[str, Any]]
    finish_reason: str  # stop | length | tool_calls
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's `logprobs.content`, when asked for


@dataclass
class Job:
    """One admitted request. Events go to `events` on the HTTP side's loop: ("delta", text),
    ("logprobs", entries of the tokens of the next delta), ("done", Result) or ("error", RequestError)."""

    ids: list[int]
    boundaries: list[int]
    max_new_tokens: int
    sampling: Sampling
    forced: str | None  # tool_choice: a function name, "" = any, None = the model decides
    loop: asyncio.AbstractEventLoop
    ignore_eos: bool = False
    # False: the request offered no tools (none, or tool_choice "none"): the answer is text, markup included.
    tools: bool = True
    submitted: float = field(default_factory=time.perf_counter)  # `queue_seconds_total` counts from here
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set by the batch loop: events wait here and go over in one hand-off per step
    # (agent/serve_batch.py `Outbox`).
    outbox: Any = None

    def emit(self, kind: str, data: Any) -> None:
        if self.outbox is not None:
            self.outbox.add(self, (kind, data))
            return
        with contextlib.suppress(RuntimeError):  # the HTTP side's loop is gone: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))


class Scheduler:
    def __init__(
        self,
        engine: Any,
        prefix: PrefixCache,
        metrics: Metrics,
        *,
        max_concurrent: int,
        max_queue: int,
        join_feed_tokens: int = 0,
        join_together: bool = True,
    ) -> None:
        self.engine, self.prefix, self.metrics = engine, prefix, metrics
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        # A joining request's unrestored prompt part of at most this many tokens is fed by the batch's
        # step rather than prefilled alone (`begin(feed=...)`).
        self.join_feed_tokens = join_feed_tokens
        # Longer parts of requests joining in one iteration are prefilled together (agent/serve_together.py).
        self.join_together = join_together
        self._waiting: collections.deque[Job] = collections.deque()
        self._running = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.peak_batch = 0  # the most rows decoded in one batched step so far
        self.batch_path: str | None = None  # "engine" (per-row slots) or "model" (agent/serve_rows.py)
        # Synchronize the device at each join phase's boundary (`lap`), so that a phase's time on CUDA is
        # its GPU work and not only its launches'. Off by default: then no sync at all is added.
        self.sync_phases = env_switch(SYNC_PHASES_ENV) is True
        metrics.gauges["queue_depth"] = lambda: len(self._waiting)
        metrics.gauges["running_requests"] = lambda: self._running
        metrics.gauges["memory_tier_bytes"] = lambda: prefix.memory_used
        metrics.gauges["gpu_tier_bytes"] = lambda: prefix.device_used
        metrics.gauges["staged_bytes"] = lambda: prefix.staged_used
        metrics.gauges["host_copy_seconds"] = lambda: prefix.copy_seconds
        from hybrid_agent.model.batch import batchable

        model = getattr(engine, "model", None)
        # Several requests decode in one batch when the model's path can batch them (model/batch.py);
        # otherwise (a window, MLA layers) one at a time on the engine.
        self.batched = max_concurrent > 1 and model is not None and batchable(model, engine.window)
        self._thread = threading.Thread(target=self._serve, name="hybrid-agent-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Admit `job`, or refuse it with 429 when the running slots and the queue are both full."""
        with self._cond:
            if self._stopping:
                raise RequestError(503, "the server is shutting down", type="server_error")
            if self._running + len(self._waiting) >= self.max_concurrent + self.max_queue:
                raise RequestError(
                    429,
                    "too many requests: every slot and the queue are full; retry later",
                    type="rate_limit_error",
                )
            self._waiting.append(job)
            self._cond.notify()

    @property
    def running(self) -> int:
        """Admitted requests that have left the queue and not yet finished."""
        return self._running

    def next_jobs(self, active: int) -> list[Job] | None:
        """Wait until there is work (queued jobs, or `active` running ones), then take queued jobs up to
        the free slots; None once stopping with nothing left. Taken jobs count as running."""
        with self._cond:
            while not self._waiting and not active and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._waiting and not active:
                return None
            jobs = []
            while self._waiting and active + len(jobs) < self.max_concurrent:
                jobs.append(self._waiting.popleft())
            self._running += len(jobs)
            return jobs

    def release(self) -> None:
        """A running job is over (answered, failed or cancelled): its slot is free."""
        with self._cond:
            self._running -= 1

    def stop(self) -> None:
        """Finish the running request, refuse the waiting ones, stop the thread."""
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._cond.notify()
        for job in waiting:
            job.emit("error", RequestError(503, "the server is shutting down", type="server_error"))
        self._thread.join()

    def _serve(self) -> None:
        if self.batched:
            from hybrid_agent.agent.serve_batch import BatchLoop

            BatchLoop(self).run()
            return
        while (jobs := self.next_jobs(0)) is not None:
            for job in jobs:
                try:
                    result = None if job.cancelled.is_set() else self._run(job)
                    if result is not None:
                        job.emit("done", result)
                except Exception as exc:  # this request fails, the server goes on
                    job.emit("error", failure(exc))
                finally:
                    self.release()

    def sync(self) -> None:
        """With `sync_phases`, wait for the work the model thread queued on the engine's device (not the
        prefix writer's copies: agent/serve_rows.py `wait_for_model`); else nothing."""
        if self.sync_phases:
            wait_for_model(getattr(self.engine, "device", "cpu"))

    def lap(self, phase: str, t0: float) -> float:
        """Add the time since `t0` to `join_<phase>_seconds_total` (after `sync`); returns the time now,
        the next phase's start."""
        self.sync()
        now = time.perf_counter()
        self.metrics.inc(f"join_{phase}_seconds_total", now - t0)
        return now

    # -- one request ------------------------------------------------------------------------------

    def _restore(self, job: Job, load: Callable[[int], bool] | None = None) -> tuple[Hit | None, int]:
        """Find the longest saved prefix of `job`'s tokens and restore it into the engine (reset either
        way); `load(n_tokens)` False: found but left for the caller to load elsewhere (from the hit's
        tensors, which a move between the tiers does not change)."""
        t0 = time.perf_counter()
        hit = self.prefix.lookup(job.ids, job.boundaries)
        self.lap("lookup", t0)
        eng = self.engine
        if hit is None:
            self.metrics.inc("state_misses_total")
            eng.reset()
            return None, 0
        t0 = time.perf_counter()
        eng.reset()
        if load is None or load(hit.entry.n_tokens):
            # No clone of the whole state first: `restore` only reads the tensors (agent/engine.py).
            eng.restore(hit.recurrent, hit.pages)
        self.metrics.inc("state_hits_total", tier=hit.source)
        self.metrics.inc("restore_seconds_total", hit.seconds + time.perf_counter() - t0)
        return hit, hit.entry.n_tokens

    def _save(self, ids: list[int], base: Entry | None, snapshot: Snapshotter | None = None) -> Entry:
        """Save the state holding `ids` (the engine's live one, or `snapshot`'s) as continuing `base`
        (whose pages are not copied)."""
        # Snapshots are copies already (`Engine.snapshot`): no second copy of the state. For the device
        # tier, or staged when there is none and the device has room, they stay on the model's device
        # (`snapshot_on_device`): the host copy is made off this thread (agent/serve_snapshots.py).
        snap = snapshot if snapshot is not None else of_engine(self.engine)
        (recurrent, pages), _ = take_snapshot(self.prefix, snap, 0 if base is None else base.n_tokens)
        self.metrics.inc("state_saves_total")
        entry = self.prefix.put(self.prefix.digest(ids), len(ids), recurrent, pages, base)
        if entry.staged:
            self.metrics.inc("state_saves_staged_total")
        return entry

    def begin(self, job: Job, defer: bool = False, feed: int = 0) -> Row:
        """`_begin`, with the prefix writer's device -> host copies paused meanwhile: a read of the
        device here (the first token's logits) does not queue behind a large state being copied out."""
        self.prefix.hold_copies()
        try:
            return self._begin(job, defer, feed)
        finally:
            self.prefix.release_copies()

    def _begin(self, job: Job, defer: bool = False, feed: int = 0) -> Row:
        """Restore the longest saved prefix, prefill the rest of the prompt on the engine, save the
        prompt's state; the engine's live state is then the row's, ready for its first token.
        `defer`: the prompt's last token (and a forced call's markup) are left in `row.pending` for the
        batch's step to feed (each would otherwise cost a forward of its own here), unless the state
        would then be empty. `feed`: with `defer`, a part of the prompt not restored (before its last
        token) of at most this many tokens is not prefilled here either: it goes to `row.pending` too,
        and the batch saves the prompt's state when its step has fed it (`row.prompt_save_in`); a saved
        prefix is then not restored into the engine either: the batch loads it straight into the row's
        place (`row.start`), one copy fewer."""
        from hybrid_agent.agent.stream import VisibleText
        from hybrid_agent.model.decode.sampling import SamplingParams

        eng, chat = self.engine, self.engine.chat
        self.metrics.inc("queue_seconds_total", time.perf_counter() - job.submitted)
        last = len(job.ids) - 1
        # The batch's step feeds the whole rest of the prompt when it is short.
        step_fed: Callable[[int], bool] = lambda cached: defer and 0 < last - cached <= feed
        t = time.perf_counter()  # each phase's time goes to `join_<phase>_seconds_total` (`lap`)
        hit, cached = self._restore(job, load=lambda cached: not step_fed(cached))
        t = self.lap("restore", t)
        base = hit.entry if hit is not None else None
        eng.sampling = SamplingParams(temperature=job.sampling.temperature)
        sampler = RowSampler.make(job.sampling, eng)  # after the restore: its reset reseeds the engine
        t = self.lap("setup", t)
        # The prompt's state is saved one token short of its end: the same request again (a retry, or
        # another sample) restores it and prefills that last token, whose logits the answer starts from.
        prompt_entry = base
        by_step = step_fed(cached)
        if cached < last and not by_step:
            eng.prefill(job.ids[cached:last])
            t = self.lap("prefill", t)
            # The hold's bound runs from the admission's start (`begin`), which a long prefill outlasts:
            # renewed before the save, so its host copy waits for the rest of the admission.
            self.prefix.hold_copies()
            prompt_entry = self._save(job.ids[:last], base)
            t = self.lap("save", t)
        defer = by_step or (defer and max(cached, last) > 0)
        row = Row(job, cached, prompt_entry, eng.text_stream(), VisibleText(chat, job.tools), chat, sampler,
                  StopText(job.sampling.stop))  # fmt: skip
        if by_step:
            # (the batch loop counts them in `step_prompt_tokens_total` once it knows which the steps feed)
            row.pending, row.prompt_save_in, row.start = list(job.ids[cached:]), last - cached, hit
        elif defer:
            row.pending = list(job.ids[last:])
        else:
            eng.prefill(job.ids[last:])
        if job.forced is not None:  # tool_choice forces a call: the answer starts with its markup
            opening = forced_opening(job.forced)
            forced = Segment(((chat.tool_call_open, True), (opening, False))).encode(eng.tokenizer)
            if defer:
                row.pending += forced
            else:
                eng.prefill(forced)
            row.generated += forced
            row.raw = "".join(row.stream.push(t) for t in forced)
            for tok in forced:
                sampler.seen(tok)
        self.lap("prefill", t)  # without `defer`: the last token and a forced call's markup
        return row

    def save_prompt(self, row: Row, snapshot: Snapshotter) -> None:
        """The prompt's state (one token short of its end, as `begin` saves it) from `snapshot`, once
        the batch's step has fed the rest of a prompt that `begin(feed=...)` left to it."""
        row.prompt_entry = self._save(row.job.ids[:-1], row.prompt_entry, snapshot)

    def end(self, row: Row, snapshot: Snapshotter | None = None) -> Result:
        """The answer of a row whose last token is in its state (the engine's, or `snapshot`'s)."""
        job, chat = row.job, row.chat
        flushed = row.stream.flush()
        row.raw += flushed
        delta = row.stop.push(row.visible.push(flushed) + row.visible.finish())
        if not row.stop.stopped:
            delta += row.stop.finish()
        row.emit_logprobs()
        if delta:
            job.emit("delta", delta)
        # No tools offered: markup the model wrote anyway is text (vLLM's behaviour), never a call.
        parsed = chat.parse_tool_calls(row.raw) if job.tools else []
        calls = [(c.name, c.arguments) for c in parsed if c.error is None and c.name]
        content = row.stop.cut((chat.visible_text if job.tools else chat.plain_text)(row.raw))
        if row.stop.stopped:  # a stop string of the request ended the answer in its text
            calls, row.finish = [], "stop"
        finish = "tool_calls" if calls else row.finish
        # The state after the answer is reusable when the answer, sent back, renders to what was decoded.
        # (An answer cut at max_tokens lacks the stop token that rendering adds: its state is the prefix
        # just before that token, one of the boundaries looked up. Markup kept as text, with no tools
        # offered, renders back as plain text, not the markers decoded: that state is not saved.)
        answer = assistant_segment(chat, content, calls).encode(self.engine.tokenizer)
        if answer == row.generated or (finish == "length" and answer[:-1] == row.generated):
            self._save(job.ids + row.generated, row.prompt_entry, snapshot)
        self.metrics.inc("prompt_tokens_total", len(job.ids))
        self.metrics.inc("completion_tokens_total", len(row.generated))
        self.metrics.inc("cached_tokens_total", row.cached)
        logprobs = row.sampler.logprobs if job.sampling.logprobs else None
        return Result(content, calls, finish, len(job.ids), len(row.generated), row.cached, logprobs)

    def _run(self, job: Job) -> Result | None:
        """One request alone on the engine (None: cancelled)."""
        eng, t0 = self.engine, time.perf_counter()
        row = self.begin(job)
        while len(row.generated) < job.max_new_tokens:
            if job.cancelled.is_set():
                return None
            tok = row.sampler.choose(eng.last_logits)
            if not row.generated:
                now = time.perf_counter()
                self.metrics.inc("first_token_seconds_total", now - t0)
                t0 = now  # `finish_seconds_total` counts from here
            done = row.take(tok)  # its text goes out before it is fed back (the state gets it all the same)
            eng.prefill([tok])
            if done:
                break
        result = self.end(row)
        self.metrics.inc("finish_seconds_total", time.perf_counter() - t0)
        return result


@dataclass
class Row:
    """A request being decoded: its answer so far."""

    job: Job
    cached: int
    prompt_entry: Entry | None
    stream: Any
    visible: Any
    chat: Any
    sampler: RowSampler
    stop: StopText
    raw: str = ""
    generated: list[int] = field(default_factory=list)
    finish: str = "length"
    logprobs_sent: int = 0
    # Tokens of the prompt (and forced markup) not yet in the row's state: the batch feeds them first.
    pending: list[int] = field(default_factory=list)
    feeding: bool = False  # the row's token in the batch is one of those, not a generated one
    # Steps until the row's state holds the prompt but its last token, when its prompt's state is yet
    # to be saved from the batch (`Scheduler.save_prompt`); 0: nothing to save.
    prompt_save_in: int = 0
    # The saved state the row starts from when it was not restored into the engine (`begin(feed=...)`):
    # the batch loads it into the row's place itself. None: the engine's live state is the row's.
    start: Hit | None = None

    def emit_logprobs(self) -> None:
        """The logprobs of the tokens sampled since the last call (streaming sends them with the text)."""
        entries = self.sampler.logprobs
        if self.job.sampling.logprobs and len(entries) > self.logprobs_sent:
            self.job.emit("logprobs", entries[self.logprobs_sent :])
            self.logprobs_sent = len(entries)

    def take(self, tok: int) -> bool:
        """Add a decoded token (already fed to the state, or about to be); True when it ends the answer."""
        self.generated.append(tok)
        self.sampler.seen(tok)
        piece = self.stream.push(tok)
        self.raw += piece
        delta = self.stop.push(self.visible.push(piece))
        self.emit_logprobs()
        if delta:
            self.job.emit("delta", delta)
        if self.stop.stopped:
            self.finish = "stop"
            return True
        if self.job.ignore_eos:
            return False
        longest = max(len(m) for m in (self.chat.tool_call_close, *self.chat.stop_strings))
        tail = self.raw[-(len(piece) + longest) :]
        closed = self.job.tools and self.chat.tool_call_close in tail  # a call ends the answer
        if closed or any(stop in tail for stop in self.chat.stop_strings):
            self.finish = "stop"
            return True
        return False
