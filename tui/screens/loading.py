"""Shown while the model loads: what is happening, for how long, and, if it fails, why."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import LoadingIndicator, Static


class LoadingScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "app.quit", "quit")]

    def __init__(self, what: str = "Loading the model and opening the session") -> None:
        super().__init__()
        self.what = what
        self._start = time.monotonic()
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="loading"):
            yield Static(self.what, id="loading-what", markup=False)
            yield LoadingIndicator()
            yield Static("", id="loading-elapsed")

    def on_mount(self) -> None:
        self._timer = self.set_interval(0.5, self._tick)

    def _tick(self) -> None:
        self.query_one("#loading-elapsed", Static).update(f"{time.monotonic() - self._start:.0f} s")

    def failed(self, message: str) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.query_one(LoadingIndicator).display = False
        self.query_one("#loading-what", Static).update(f"Could not start:\n{message}")
        self.query_one("#loading-elapsed", Static).update("press q to quit")
        self.add_class("failed")
