"""The footer: the keys that work right now, each one clickable.

Textual's Footer rebuilds a widget per key whenever the bindings change, which happens on every
move of the cursor between panes; with this app's thirty-odd keys that cost more than the rest
of a pane switch together. KeyBar draws the same information as one line of text, so a change
of bindings is a single repaint. A click on a key presses it.
"""

from __future__ import annotations

from itertools import groupby

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static


class KeyBar(Static):
    """One line of `key description` pairs for the active bindings, grouped as in Footer."""

    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        background: $footer-background;
        color: $footer-description-foreground;
    }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def _bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            text = self.keys_text()
            if text.plain != str(self.content):
                self.update(text)

    @property
    def shown(self) -> list[tuple[str, str]]:
        """(key as displayed, description) of each key on the bar: what tests read."""
        return [(self.app.get_key_display(b), b.description) for b in self._active()]

    def _active(self) -> list[Binding]:
        seen: set[str] = set()
        out = []
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not (enabled and binding.show and binding.description) or binding.action in seen:
                continue
            seen.add(binding.action)
            out.append(binding)
        return out

    def keys_text(self) -> Text:
        variables = self.app.get_css_variables()
        key_style = Style(color=variables.get("footer-key-foreground"), bold=True)
        text = Text(no_wrap=True, overflow="ellipsis")
        for group, members in groupby(self._active(), key=lambda b: b.group):
            members = list(members)
            if group is not None and len(members) > 1:
                for binding in members:
                    text.append(
                        f" {self.app.get_key_display(binding)}", key_style + _press(binding)
                    )
                text.append(f" {group.description} ")
            else:
                for binding in members:
                    press = _press(binding)
                    text.append(f" {self.app.get_key_display(binding)}", key_style + press)
                    text.append(f" {binding.description} ", press)
        if self.app.ENABLE_COMMAND_PALETTE:
            palette = Binding(self.app.COMMAND_PALETTE_BINDING, "command_palette", "palette")
            text.append(f"  {self.app.get_key_display(palette)}", key_style + _press(palette))
            text.append(" palette", _press(palette))
        return text


def _press(binding: Binding) -> Style:
    key = binding.key.split(",")[0]
    return Style.from_meta({"@click": f"app.simulate_key({key!r})"})
