"""One editable setting: its name, an editor that fits its type, and its fault right under it.

A row knows nothing about what its value means; the pane that owns it parses the raw value and
sets `error`. That keeps typing rules in one place (engine.contract.config) and rows reusable.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual import events
from textual.app import ComposeResult
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Switch


class FieldRow(Widget):
    """A labelled editor whose fault, when it has one, opens a line right under it, and whose
    help line opens there while the editor has the focus."""

    error: reactive[str] = reactive("", layout=True)
    """What is wrong with the value; empty when it is fine."""

    class Changed(Message):
        """The editor's value changed, by the user or by code; one message type for any editor."""

        def __init__(self, row: FieldRow) -> None:
            super().__init__()
            self.row = row

        @property
        def control(self) -> FieldRow:
            return self.row

    def __init__(
        self,
        key: str,
        value: bool | str,
        *,
        choices: Sequence[str] | None = None,
        labels: dict[str, str] | None = None,
        placeholder: str = "",
        title: str = "",
        help: str = "",
        id: str | None = None,
    ) -> None:
        """A bool gets a Switch, a value with `choices` a Select (showing `labels` where given
        instead of the bare values), anything else an Input. `help` is one line shown under
        the editor while it has the focus."""
        super().__init__(id=id, classes="field")
        self.key = key
        self.title = title or key.rpartition(".")[2]  # the label shown
        self.help = help
        self.editor: Widget
        if isinstance(value, bool):
            self.editor = Switch(value, classes="field-editor")
        elif choices is not None:
            self.editor = Select(
                [((labels or {}).get(c, c), c) for c in choices],
                value=value,
                allow_blank=False,
                compact=True,
                classes="field-editor",
            )
        else:
            self.editor = Input(
                value, placeholder=placeholder, compact=True, classes="field-editor"
            )

    def compose(self) -> ComposeResult:
        yield Label(self.title, classes="field-key")
        yield self.editor
        yield Label("", classes="field-error", markup=False)

    def _on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # the help line is made when first needed: a form of ~90 rows keeps ~90 fewer widgets
        # in the DOM until a person visits them
        if self.help and not self.query(".field-help"):
            self.mount(Label(self.help, classes="field-help", markup=False))

    @property
    def value(self) -> bool | str:
        """The editor's raw value: a bool from a Switch, otherwise the text or choice shown."""
        return self.editor.value  # type: ignore[attr-defined]

    @value.setter
    def value(self, value: bool | str) -> None:
        self.editor.value = value  # type: ignore[attr-defined]

    def watch_error(self, error: str) -> None:
        self.set_class(bool(error), "-error")
        self.query_one(".field-error", Label).update(error)

    def _on_input_changed(self, event: Input.Changed) -> None:
        self._relay(event)

    def _on_switch_changed(self, event: Switch.Changed) -> None:
        self._relay(event)

    def _on_select_changed(self, event: Select.Changed) -> None:
        self._relay(event)

    def _relay(self, event: Message) -> None:
        event.stop()
        self.post_message(self.Changed(self))
