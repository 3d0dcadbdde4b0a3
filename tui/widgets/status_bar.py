"""The bottom line: approval mode (always visible), model, device, state, speed, 'saved'."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    tokens_per_s: float | None = None
    saved_turn: int | None = None  # the turn whose snapshot was committed last
    busy: str | None = None  # "thinking", "loading model", ... while the agent works

    def with_(self, **changes: object) -> StatusInfo:
        return replace(self, **changes)  # type: ignore[arg-type]


def format_status(info: StatusInfo) -> str:
    window = "full" if info.window is None else f"{info.window:,}"
    speed = "—" if info.tokens_per_s is None else f"{info.tokens_per_s:.1f} tok/s"
    parts = [
        info.model,
        info.device,
        f"{info.state_tokens:,} tok",
        _megabytes(info.state_bytes),
        f"window {window}",
        speed,
    ]
    return "  │  ".join(parts)


def _megabytes(n: int) -> str:
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb >= 1 or mb == 0 else f"{mb:.2f} MB"  # a tiny state is not "0.0 MB"


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
