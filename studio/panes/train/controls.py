"""The row above the run: Start, Pause/Resume, Stop and Save buttons, how many processes the next
run gets, and a one-line status. It shows the pane's state and tells the pane which action a
button asks for; it never commands the run itself."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Input, Label, Static

from studio.panes.train.state import COMMANDING, RunState, allows


class RunControls(Horizontal):
    class Pressed(Message):
        """A button asks for one of the pane's actions."""

        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.state = RunState.IDLE

    def compose(self) -> ComposeResult:
        yield Button("Start", id="train-start", compact=True, tooltip="s")
        yield Button("Pause", id="train-pause", compact=True, tooltip="p")
        yield Button("Stop", id="train-stop", compact=True, tooltip="x")
        yield Button("Save now", id="train-save", compact=True, tooltip="c")
        yield Label("processes", id="train-processes-label")
        yield Input(
            "1",
            id="train-processes",
            type="integer",
            compact=True,
            tooltip="more than 1: torchrun on this machine (DDP or FSDP by train.parallel)",
        )
        yield Static(id="train-status", markup=False)

    @property
    def status(self) -> Static:
        return self.query_one("#train-status", Static)

    @property
    def processes(self) -> int:
        """How many processes the next run gets (the field; 1 when empty or not a number)."""
        try:
            return max(1, int(self.query_one("#train-processes", Input).value or 1))
        except ValueError:
            return 1

    def show(self, state: RunState) -> None:
        """Offer the buttons that make sense in `state`."""
        self.state = state
        self.query_one("#train-pause", Button).label = (
            "Resume" if state is RunState.PAUSED else "Pause"
        )
        for button, allowed in (
            ("#train-start", allows(state, "start")),
            ("#train-pause", state in COMMANDING),
            ("#train-stop", allows(state, "stop")),
            ("#train-save", allows(state, "save")),
        ):
            self.query_one(button, Button).disabled = not allowed

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        action = {
            "train-start": "start",
            "train-pause": "resume" if self.state is RunState.PAUSED else "pause",
            "train-stop": "stop",
            "train-save": "save",
        }.get(event.button.id or "")
        if action:
            self.post_message(self.Pressed(action))
