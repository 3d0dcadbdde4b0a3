"""The bottom two lines: approval mode (always visible), then what the session uses (model, device,
state, attention cache against the window, snapshots on disk) and how it runs (last turn's prefill
and decode speed, the session's time, the workspace's git branch), then 'saved'."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hybrid_agent.agent.usage import cache_text, duration, megabytes, speed_text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Static

MODES = ("ask", "accept-edits", "auto", "plan")  # the order shift+tab cycles them in


@dataclass(frozen=True)
class StatusInfo:
    model: str = "—"
    device: str = "—"
    state_tokens: int = 0
    state_bytes: int = 0
    window: int | None = None
    tokens_per_s: float | None = None  # decode speed of the last turn
    saved_turn: int | None = None  # the turn whose snapshot was committed last
    busy: str | None = None  # "thinking", "loading model", ... while the agent works
    cache_bytes: int | None = None  # the attention cache (agent/usage.py); None: not known
    cache_limit_bytes: int | None = None  # what the window lets it grow to
    snapshot_bytes: int | None = None  # the session's snapshots in the database
    prefill_tokens_per_s: float | None = None
    session_s: float | None = None  # the session's turns, summed
    git: str | None = None  # "main *": branch, and a star when the work tree has changes

    def with_(self, **changes: object) -> StatusInfo:
        return replace(self, **changes)  # type: ignore[arg-type]


def format_status(info: StatusInfo) -> str:
    """Two lines: what the session holds, then how it runs and what it keeps on disk."""
    first = [
        info.model,
        info.device,
        f"{info.state_tokens:,} tok",
        megabytes(info.state_bytes),
        cache_text(info.cache_bytes, info.cache_limit_bytes, info.window),
    ]
    second = [f"prefill {speed_text(info.prefill_tokens_per_s)}", f"decode {speed_text(info.tokens_per_s)}"]
    if info.session_s is not None:
        second.append(f"time {duration(info.session_s)}")
    if info.snapshot_bytes is not None:
        second.append(f"disk {megabytes(info.snapshot_bytes)}")
    if info.git:
        second.append(f"git {info.git}")
    return " │ ".join(first) + "\n" + " │ ".join(second)


class StatusBar(Horizontal):
    """Mode on the left (it decides what the agent may do without asking), facts in the middle,
    the last save on the right."""

    # init=False: the watchers query children, which exist only once composed (on_mount draws first).
    mode: reactive[str] = reactive("ask", init=False)
    info: reactive[StatusInfo] = reactive(StatusInfo, always_update=True, init=False)

    def compose(self) -> ComposeResult:
        yield Static(id="mode")
        yield Static(id="facts", markup=False)
        yield Static(id="saved")

    def on_mount(self) -> None:
        self.watch_mode(self.mode)
        self.watch_info(self.info)

    def watch_mode(self, mode: str) -> None:
        label = self.query_one("#mode", Static)
        label.update(f" {mode} ⇧⇥ ")
        for m in MODES:
            label.set_class(m == mode, f"mode-{m}")

    def watch_info(self, info: StatusInfo) -> None:
        self.query_one("#facts", Static).update(format_status(info))
        saved = self.query_one("#saved", Static)
        if info.busy:
            saved.update(f"{info.busy} … ")
            saved.set_class(False, "saved")
        elif info.saved_turn is not None:
            saved.update(f"✔ saved turn {info.saved_turn} ")
            saved.set_class(True, "saved")
        else:
            saved.update("")
