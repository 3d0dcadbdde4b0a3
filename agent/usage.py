"""What a session uses, for the status bar and `/status`: tokens and bytes of the state, the attention
cache against what the window lets it grow to, the bytes its snapshots take in the database, the
prefill and decode speed of its last turn, and the time its turns took; plus the git branch of the
workspace.

Speeds and times come from the turn records (agent/loop.py stores `prefill_s`, `decode_s` and
`duration_s` beside the token counts in each turn's meta), so a resumed session shows its own last
turn, not the turn another session ran last. Sessions saved before those were recorded show none.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_agent.memory import SessionNotFoundError

GIT_TIMEOUT_S = 1.0  # `git` runs in the UI's background, but a hung network mount must not pile up calls


@dataclass(frozen=True)
class TurnSpeeds:
    """The speeds of one saved turn (None where the turn did not record them) and the session's time."""

    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    session_s: float = 0.0  # the turns' durations, summed


@dataclass(frozen=True)
class Usage:
    state_tokens: int = 0
    state_bytes: int = 0
    cache_bytes: int | None = None  # the attention cache's part of the state (None: not known)
    cache_limit_bytes: int | None = None  # what the window lets it grow to (None: full attention)
    window: int | None = None
    snapshot_bytes: int = 0
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    session_s: float = 0.0


def speeds(turn_metas: Iterable[Mapping[str, Any]]) -> TurnSpeeds:
    """The last turn's speeds and the summed duration, from the turns' meta, oldest first."""
    metas = list(turn_metas)
    total = sum(float(m.get("duration_s") or 0.0) for m in metas)
    if not metas:
        return TurnSpeeds(session_s=total)
    last = metas[-1]
    prefill = _rate(last.get("prompt_tokens"), last.get("prefill_s"))
    decode = _rate(last.get("completion_tokens"), last.get("decode_s"))
    return TurnSpeeds(prefill, decode, total)


def _rate(tokens: Any, seconds: Any) -> float | None:
    if tokens is None or not seconds:
        return None
    return float(tokens) / float(seconds)


def attention_cache(engine: Any, window: int | None, sinks: int) -> tuple[int | None, int | None]:
    """(bytes of the attention cache now, bytes it can grow to under the window). The cache is read
    from the engine's live `ModelState` (model/state.py); an engine without one gives (None, None).
    The limit is bytes per cached token times window + sinks; None under full attention or before
    anything is cached (no bytes per token to scale)."""
    state = getattr(engine, "state", None)
    layers = getattr(state, "layers", None)
    if layers is None:
        return None, None
    total, per_token = 0, 0.0
    for layer in layers:
        pos = getattr(layer, "pos", None)  # the cached tokens' positions; None: no attention here
        if pos is None:
            continue
        size = sum(t.numel() * t.element_size() for t in (*layer.cache.values(), pos))
        total += size
        if len(pos):
            per_token += size / len(pos)
    if window is None or per_token == 0:
        return total, None
    return total, round(per_token * (window + sinks))


def usage_of(agent: Any) -> Usage:
    """The active session's usage. Reads the engine's state and the database: call it on the agent's
    model thread (the UI does, through its bridge)."""
    engine = agent.engine
    window, sinks = engine.window, int(getattr(engine, "sinks", 0) or 0)
    cache, limit = attention_cache(engine, window, sinks)
    try:
        metas = [t.meta for t in agent.store.turns(agent.session_id)]
    except SessionNotFoundError:  # a new session's row is written with its first turn
        metas = []
    timing = speeds(metas)
    return Usage(
        state_tokens=int(engine.n_tokens),
        state_bytes=int(engine.state_bytes),
        cache_bytes=cache,
        cache_limit_bytes=limit,
        window=window,
        snapshot_bytes=agent.snapshot_bytes(),
        prefill_tokens_per_s=timing.prefill_tokens_per_s,
        decode_tokens_per_s=timing.decode_tokens_per_s,
        session_s=timing.session_s,
    )


def megabytes(n: int) -> str:
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb >= 1 or mb == 0 else f"{mb:.2f} MB"  # a tiny state is not "0.0 MB"


def duration(seconds: float) -> str:
    """3 s, 4m 05s, 2h 03m: the session time in the width of a status bar field."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def cache_text(cache: int | None, limit: int | None, window: int | None) -> str:
    """The attention cache against its limit: "cache 1.5/6.0 MB, window 4,096"."""
    if cache is None:
        return f"window {'full' if window is None else f'{window:,}'}"
    if window is None:
        return f"cache {megabytes(cache)}, full attention"
    if limit is None:
        return f"cache {megabytes(cache)}, window {window:,}"
    now, cap = megabytes(cache).removesuffix(" MB"), megabytes(limit)
    return f"cache {now}/{cap}, window {window:,}"


def speed_text(tokens_per_s: float | None) -> str:
    return "—" if tokens_per_s is None else f"{tokens_per_s:,.1f} tok/s"


def describe(usage: Usage, git: str | None = None) -> list[str]:
    """`/status`: one fact a line."""
    lines = [
        f"state        {usage.state_tokens:,} tokens, {megabytes(usage.state_bytes)}",
        f"attention    {cache_text(usage.cache_bytes, usage.cache_limit_bytes, usage.window)}",
        f"on disk      {megabytes(usage.snapshot_bytes)} of snapshots",
        f"last turn    prefill {speed_text(usage.prefill_tokens_per_s)}, "
        f"decode {speed_text(usage.decode_tokens_per_s)}",
        f"session time {duration(usage.session_s)} in its turns",
    ]
    if git:
        lines.append(f"git          {git}")
    return lines


# ---- git ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GitStatus:
    branch: str  # the branch, or `detached@<short hash>`
    dirty: bool  # changes, staged or not, or untracked files

    def __str__(self) -> str:
        return f"{self.branch}{' *' if self.dirty else ''}"


def git_status(folder: str | Path, timeout: float = GIT_TIMEOUT_S) -> GitStatus | None:
    """The branch and dirty state of the repository `folder` is in; None outside a repository, without
    git, or when git takes longer than `timeout` (one `git status` call, porcelain v2)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=normal"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    branch, oid, dirty = None, None, False
    for line in out.stdout.splitlines():
        if line.startswith("# branch.head "):
            branch = line.removeprefix("# branch.head ")
        elif line.startswith("# branch.oid "):
            oid = line.removeprefix("# branch.oid ")
        elif line and not line.startswith("#"):
            dirty = True
    if branch is None:
        return None
    if branch == "(detached)":
        branch = f"detached@{(oid or '')[:7]}"
    return GitStatus(branch, dirty)


def _git_env() -> dict[str, str]:
    import os

    # No pager, no prompt for credentials, no lock taken for the index refresh (another git may be
    # running in the same repository: the status bar must never make it fail).
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat"}
