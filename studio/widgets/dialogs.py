"""Small modal questions: which path, and are you sure.

They return their answer through `dismiss`, so a caller in a worker can simply
`await app.push_screen_wait(...)` and read the code top to bottom.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, TextArea

TCSS = Path(__file__).with_name("dialogs.tcss")  # absolute: subclasses may live elsewhere


class PathDialog(ModalScreen[str | None]):
    """Ask for a line of text (a file path, unless told otherwise); None when the user backs
    out. `suggester` completes what is typed (the Config pane's field names)."""

    CSS_PATH = TCSS
    AUTO_FOCUS = "#path"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        value: str = "",
        *,
        action: str = "OK",
        placeholder: str = "path/to/config.toml",
        suggester: Suggester | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.initial = value
        self.action_label = action
        self.placeholder = placeholder
        self.suggester = suggester

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Input(
                self.initial, placeholder=self.placeholder, suggester=self.suggester, id="path"
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.action_label, variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._answer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "ok":
            self._answer()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _answer(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if path:
            self.dismiss(path)
        else:
            self.notify("Type a path first, or press Escape to cancel.", severity="warning")


class ConfirmDialog(ModalScreen[bool]):
    """Ask before doing something that cannot be undone; No is the default and Escape's answer."""

    CSS_PATH = TCSS
    AUTO_FOCUS = "#cancel"  # Enter alone must never destroy anything
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)


class ChoiceDialog(ModalScreen[str | None]):
    """Ask which of a few ways to go; None (Escape, or the last button) backs out."""

    CSS_PATH = TCSS
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str]], cancel: str = "Cancel"):
        """`choices` are (answer, button label); the first is the primary one."""
        super().__init__()
        self.question = question
        self.choices = choices
        self.cancel = cancel

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title", markup=False)
            with Horizontal(classes="dialog-buttons"):
                for i, (answer, label) in enumerate(self.choices):
                    variant = "primary" if i == 0 else "default"
                    yield Button(label, variant=variant, id=f"choice-{answer}")
                yield Button(self.cancel, id="cancel")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        button_id = event.button.id or ""
        self.dismiss(button_id.removeprefix("choice-") if button_id != "cancel" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CommandDialog(ModalScreen[None]):
    """A command line to copy: selectable text, and a button that puts it on the clipboard
    (through the terminal, so it works over ssh too)."""

    CSS_PATH = TCSS
    AUTO_FOCUS = "#copy"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, title: str, command: str) -> None:
        super().__init__()
        self.title_text = title
        self.command = command

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog command-dialog"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield TextArea(self.command, read_only=True, soft_wrap=True, id="command")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Copy", variant="primary", id="copy")
                yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "copy":
            self.app.copy_to_clipboard(self.command)
            self.notify("Copied the command to the clipboard.", markup=False)
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
