"""A trace of the start of `hybrid-agent run`, phase by phase, for the cold-start benchmark.

`HYBRID_AGENT_STARTUP_TRACE=1` writes one stderr line per phase, `hybrid-agent: startup PHASE T` with
T the wall-clock time (seconds since the epoch), so a benchmark that noted when it spawned the process
gets each phase's offset from the spawn (bench/cold_start.py, docs/results.md "Cold start"). The
phases: `main` (the interpreter is up, the parser imported), `settings`, `preload-start` (torch and
the loader imported; the weights are read on a thread from here: agent/factory.py `ModelPreload`;
before `settings` when `--model` and `--device` are both given, which the settings cannot change),
`device-ready` and `weights-read` (on that thread), `imports` (the agent's modules), `store-open`,
`model-taken` (the agent has the model: its wait for the thread ends here), `engine-ready`,
`agent-ready` (the session exists); the `system/init` line follows.
`serve` (agent/serve_command.py) starts the read first, then marks `imports` (the server's modules),
`store-open` and `engine-ready`; `acp` (agent/acp_commands.py) starts it once its settings are read,
and the editor's first session takes the model (`model-taken`).
This module imports nothing of the package, so any module may mark a phase.
"""

from __future__ import annotations

import os
import sys
import time

TRACE_ENV = "HYBRID_AGENT_STARTUP_TRACE"
TRACE_PREFIX = "hybrid-agent: startup "


def mark(phase: str) -> None:
    """One trace line for `phase`, when the trace is on (module docstring)."""
    if os.environ.get(TRACE_ENV, "").strip() in ("", "0"):
        return
    print(f"{TRACE_PREFIX}{phase} {time.time():.6f}", file=sys.stderr, flush=True)
