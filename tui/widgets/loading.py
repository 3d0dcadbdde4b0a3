"""Shown at the top of the conversation while the model loads: what is happening, for how long, and,
if it fails, why. Not a modal screen: the input stays live, and a message typed meanwhile is sent as
soon as the agent is ready."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import LoadingIndicator, Static


class LoadingPanel(Vertical):
    def __init__(self, what: str = "Loading the model and opening the session") -> None:
        super().__init__()
        self.what = what
        self._start = time.monotonic()
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.what, id="loading-what", markup=False)
        yield LoadingIndicator()
        yield Static("", id="loading-elapsed")

    def on_mount(self) -> None:
        self._timer = self.set_interval(0.5, self._tick)

    def _tick(self) -> None:
        elapsed = time.monotonic() - self._start
        self.query_one("#loading-elapsed", Static).update(f"{elapsed:.0f} s  (you can type meanwhile)")

    def failed(self, message: str) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.query_one(LoadingIndicator).display = False
        self.query_one("#loading-what", Static).update(f"Could not start:\n{message}")
        self.query_one("#loading-elapsed", Static).update("ctrl+q quits")
        self.add_class("failed")
