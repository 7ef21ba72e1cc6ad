"""The `gpt-studio` app: a frame of panes, the command line that opens it, and the palette.

The app stays small: each pane owns its widgets, bindings and styling; this module arranges
panes, turns their bindings into command-palette entries, and handles the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult, SystemCommand
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from engine import __version__
from engine.config import Config, load
from engine.errors import cli_entry
from studio.panes.config import ConfigPane

HERE = Path(__file__).parent


class PanesScreen(Screen):
    """The screen holding the panes; dialogs are pushed over it."""

    AUTO_FOCUS = "TabPane *"  # start inside a pane, so its keys are live and in the footer


class StudioApp(App[None]):
    """Header, one tab per pane, and a footer of the focused pane's keys."""

    TITLE = "gpt-studio"
    # absolute, because Textual resolves relative paths beside the module of a subclass
    CSS_PATH: ClassVar[list[Path]] = [
        HERE / "app.tcss",
        HERE / "panes/config.tcss",
        HERE / "widgets/form.tcss",
    ]

    def __init__(self, config: Config | None = None, source: str = "") -> None:
        super().__init__()
        self._initial = (config, source)

    def get_default_screen(self) -> Screen:
        return PanesScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="panes"), TabPane("Config", id="config"):
            yield ConfigPane(*self._initial, id="config-pane")
        yield Footer()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's own commands, then every key binding shown in the footer right now."""
        yield from super().get_system_commands(screen)
        seen: set[str] = set()
        for node, binding, enabled, tooltip in screen.active_bindings.values():
            if not (enabled and binding.show and binding.description) or binding.system:
                continue
            if binding.action in seen:
                continue
            seen.add(binding.action)
            key = self.get_key_display(binding)
            yield SystemCommand(
                binding.description,
                f"{tooltip or binding.tooltip} ({key})".lstrip(),
                partial(self.run_action, binding.action, node),
            )


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """`gpt-studio [--config PATH]`: a bad config is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="gpt-studio",
        description="A terminal studio to configure, train, watch and talk to GPT models.",
    )
    parser.add_argument("--config", metavar="PATH", help="a TOML config to open, e.g. my.toml")
    parser.add_argument("--version", action="version", version=f"gpt-studio {__version__}")
    args = parser.parse_args(argv)
    config = load(Path(args.config)) if args.config else None
    StudioApp(config, args.config or "").run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
