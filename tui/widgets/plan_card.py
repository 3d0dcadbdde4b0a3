"""Under a plan-mode turn's answer (the plan, agent/plan.py): what accepting it does, and the button."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Static


class PlanCard(Horizontal):
    """`Accept plan` (or ctrl+g) runs the app's `accept_plan` action; once used, or once a newer turn
    ran, the card only says what happened."""

    def __init__(self, back_to: str) -> None:
        super().__init__(classes="plan-card")
        self.back_to = back_to

    def compose(self) -> ComposeResult:
        yield Button(
            "Accept plan", id="accept-plan", variant="success", compact=True, action="app.accept_plan"
        )
        yield Static(
            f"ctrl+g: switch back to {self.back_to} mode and carry it out; or type to change the plan",
            id="plan-hint",
            markup=False,
        )

    def close(self, text: str) -> None:
        """The plan can no longer be accepted from here: say why instead of offering it."""
        self.query_one(Button).disabled = True
        self.query_one("#plan-hint", Static).update(text)
