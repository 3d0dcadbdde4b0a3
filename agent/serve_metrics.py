"""Prometheus counters and gauges of `hybrid-agent serve` (agent/serve_scheduler.py counts them; the
app serves them at /metrics, agent/serve_app.py)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import ClassVar


class Metrics:
    """Prometheus counters and gauges, as text (the exposition format, version 0.0.4)."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "requests_total": "chat completion requests answered, by HTTP status",
        "prompt_tokens_total": "prompt tokens of finished requests",
        "completion_tokens_total": "tokens generated",
        "cached_tokens_total": "prompt tokens restored from a saved state instead of prefilled",
        "state_hits_total": "requests that restored a saved prefix state, by tier",
        "state_misses_total": "requests that found no saved prefix state",
        "restore_seconds_total": "time spent finding and restoring saved states",
        "state_saves_total": "prefix states saved",
        "state_saves_staged_total": "of state_saves_total: snapshotted on the GPU outside the device tier "
        "(staged), their host copy made by the prefix writer thread, not before the first token",
        "decode_steps_total": "batched decode steps",
        "decode_seconds_total": "time in batched decode steps (launch and wait, not the host work between)",
        "rows_seconds_total": "host time taking the rows' tokens, done while the device runs each step",
        "batch_rows_total": "rows over all batched decode steps (divided by the steps: the mean batch)",
        "batch_builds_total": "batch buffers built (at start-up, and again larger when a row outgrows them)",
        "join_seconds_total": "time admitting requests to the batch (restore, prefill, first token; on "
        "the engine's slots the copy into the slot too)",
        "join_restore_seconds_total": "of join_seconds_total: finding and restoring the saved prefix (into "
        "the engine, straight into an engine slot, or built for the model's batch to load)",
        "join_lookup_seconds_total": "of join_restore_seconds_total: the prefix lookup (digests, tiers)",
        "render_seconds_total": "time receiving and parsing request bodies and rendering them to token ids",
        "finish_seconds_total": "one request at a time: from its first token to its answer",
        "queue_seconds_total": "time admitted requests waited for the model thread to take them",
        "first_token_seconds_total": "one request at a time: from the model thread taking it to its token 1",
        "join_setup_seconds_total": "of join_seconds_total: the row's sampler set-up and first token choice",
        "join_prefill_seconds_total": "of join_seconds_total: the prompt's prefill alone on the engine",
        "join_save_seconds_total": "of join_seconds_total: saving the prompt's state (snapshot, tier put)",
        "join_load_seconds_total": "of join_seconds_total: the state's copy into the batch (on the engine's "
        "slots; the model's batch is repacked after the admissions, outside join_seconds_total)",
        "step_prompt_tokens_total": "prompt tokens fed by the batch's step while other rows decode, "
        "instead of a prefill of their own on joining (--join-feed-tokens)",
        "together_prompt_tokens_total": "prompt tokens prefilled in one forward with other joining "
        "requests' (--join-together)",
        "warmup_seconds_total": "time warming the batched step at start-up (before any request)",
    }
    GAUGES: ClassVar[dict[str, str]] = {
        "queue_depth": "admitted requests waiting for the engine",
        "running_requests": "requests on the engine",
        "memory_tier_bytes": "bytes of saved states in the host-memory tier",
        "gpu_tier_bytes": "bytes of saved states in the device tier (on the model's GPU)",
        "staged_bytes": "bytes of staged saves' copies on the model's GPU, waiting for their host copy",
        "host_copy_seconds": "time the prefix writer thread spent copying saved states from the model's "
        "device to host memory, in all (off the model thread; grows only)",
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = collections.defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.values[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            values = dict(self.values)
        for name, doc in self.COUNTERS.items():
            lines += [f"# HELP hybrid_agent_{name} {doc}", f"# TYPE hybrid_agent_{name} counter"]
            rows = [(k[1], v) for k, v in values.items() if k[0] == name] or [((), 0.0)]
            for labels, value in rows:
                tag = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(
                    f"hybrid_agent_{name}{{{tag}}} {value}" if tag else f"hybrid_agent_{name} {value}"
                )
        for name, doc in self.GAUGES.items():
            value = self.gauges[name]() if name in self.gauges else 0.0
            lines += [f"# HELP hybrid_agent_{name} {doc}", f"# TYPE hybrid_agent_{name} gauge"]
            lines.append(f"hybrid_agent_{name} {float(value)}")
        return "\n".join(lines) + "\n"
