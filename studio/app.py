"""The `gpt-studio` app: a frame of panes, the command line that opens it, and the palette.

The app stays small: each pane owns its widgets, bindings and styling; this module arranges
panes, turns their bindings into command-palette entries, routes the messages panes send up to
the panes that need them, and handles the command line.

One config flows through it: the Config pane holds it; the Dataset pane's choices go into that
form; every change comes back as `ConfigPane.Changed` and is handed down to the Dataset, Train,
Chat and Runs panes.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import CommandPalette
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, TabbedContent, TabPane

from engine.contract import __version__
from engine.contract.config import Config, ConfigError, load
from engine.contract.errors import UsageError, cli_entry
from studio.panes.chat import ChatPane
from studio.panes.config import ConfigPane
from studio.panes.dataset import DatasetPane
from studio.panes.runs import RunsPane
from studio.panes.train import TrainPane
from studio.widgets.keybar import KeyBar

HERE = Path(__file__).parent

# id, title, key to show it, the widget that takes the cursor there
PANES: dict[str, tuple[str, str, str]] = {
    "dataset": ("Dataset", "ctrl+f", "#data-source .field-editor"),
    "config": ("Config", "ctrl+g", "#presets Button"),
    "train": ("Train", "ctrl+t", "TrainPane"),
    "chat": ("Chat", "ctrl+l", "#chat-prompt"),
    "runs": ("Runs", "ctrl+r", "#runs-table"),
}


class PanesScreen(Screen):
    """The screen holding the panes; dialogs are pushed over it."""


class StudioApp(App[None]):
    """Header, one tab per pane, and a footer of the app's and the focused pane's keys."""

    TITLE = "gpt-studio"
    # absolute, because Textual resolves relative paths beside the module of a subclass
    CSS_PATH: ClassVar[list[Path]] = [
        HERE / "app.tcss",
        *(HERE / "panes" / f"{pane}.tcss" for pane in PANES),
        HERE / "widgets/form.tcss",
    ]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit (asks first if a run is training)"),
        *[
            Binding(
                key,
                f"show_pane('{pane}')",
                f"{title} pane",
                tooltip=f"Go to the {title} pane",
                group=Binding.Group("Panes"),
                priority=True,  # also from inside a text field
            )
            for pane, (title, key, _) in PANES.items()
        ],
    ]

    def __init__(
        self, config: Config | None = None, source: str = "", *, follow: Path | None = None
    ) -> None:
        super().__init__()
        self._initial = (config, source)
        self.follow_dir = follow

    def get_default_screen(self) -> Screen:
        return PanesScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Header()
        start = "train" if self.follow_dir else "config"
        with TabbedContent(id="panes", initial=start):
            for pane, (title, key, _) in PANES.items():
                with TabPane(f"{title} {self.get_key_display(Binding(key, ''))}", id=pane):
                    yield self._pane(pane)
        yield KeyBar()

    def _pane(self, pane: str) -> Widget:
        if pane == "config":
            return ConfigPane(*self._initial, id="config-pane")
        kinds = {"dataset": DatasetPane, "train": TrainPane, "chat": ChatPane, "runs": RunsPane}
        return kinds[pane](id=f"{pane}-pane")

    def on_mount(self) -> None:
        if self.follow_dir is not None:
            self.query_one(TrainPane).follow(self.follow_dir)
        self.action_show_pane(self.query_one(TabbedContent).active)
        self.call_after_refresh(_settle_heap)

    # -- panes -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_pane":  # not from under a dialog, but from the palette
            return isinstance(self.screen, (PanesScreen, CommandPalette))
        return True

    def action_show_pane(self, pane: str) -> None:
        """Switch to a pane and put the cursor in it, so its keys are live in the footer."""
        self.query_one(TabbedContent).active = pane
        self._focus_pane(pane)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id or ""
        if pane in PANES and not self._focus_is_in(pane):
            self._focus_pane(pane)
        if pane == "runs":
            self.query_one(RunsPane).action_refresh()
        elif pane == "chat":
            self.query_one(ChatPane).refresh_models()

    def _focus_is_in(self, pane: str) -> bool:
        focused = self.focused
        return focused is not None and any(a.id == pane for a in focused.ancestors_with_self)

    def _focus_pane(self, pane: str) -> None:
        target = self.query_one(f"#{pane}").query(PANES[pane][2]).first()
        target.focus()

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

    # -- one config, handed down -----------------------------------------------------------

    def on_config_pane_changed(self, event: ConfigPane.Changed) -> None:
        self.query_one(DatasetPane).show_config(event.config, event.errors)
        self.query_one(TrainPane).show_config(event.config, event.errors)
        self.query_one(RunsPane).set_out_dir(event.config.out_dir)
        self.query_one(ChatPane).set_out_dir(event.config.out_dir)

    def on_dataset_pane_chosen(self, event: DatasetPane.Chosen) -> None:
        self.query_one(ConfigPane).set_values(event.values)

    # -- the training run ------------------------------------------------------------------

    def on_train_pane_fix_config(self, event: TrainPane.FixConfig) -> None:
        self.query_one(TabbedContent).active = "config"
        self.query_one(ConfigPane).focus_field(event.key)

    def on_train_pane_renamed(self, event: TrainPane.Renamed) -> None:
        self.query_one(ConfigPane).set_values({"name": event.name})

    def on_train_pane_run_changed(self, event: TrainPane.RunChanged) -> None:
        self.query_one(ChatPane).set_live_run(event.name)
        self.query_one(RunsPane).action_refresh()

    def on_train_pane_sample_answered(self, event: TrainPane.SampleAnswered) -> None:
        self.query_one(ChatPane).live_answer(event.sample)

    def on_chat_pane_ask_live(self, event: ChatPane.AskLive) -> None:
        if not self.query_one(TrainPane).ask_sample(event.request):
            self.query_one(ChatPane).live_refused(event.request.id)

    # -- runs on disk ----------------------------------------------------------------------

    @work(exclusive=True, group="resume")
    async def on_runs_pane_resume(self, event: RunsPane.Resume) -> None:
        """Load the run's own config into the form and continue it in the Train pane."""
        train = self.query_one(TrainPane)
        if train.state != "idle":
            self.notify("A run is already going in the Train pane.", severity="error")
            return
        try:
            config = load(event.run_dir / "config.toml")
        except ConfigError as err:
            self.notify(str(err), title="Cannot resume", severity="error", markup=False)
            return
        # the run folder as found, whatever the working directory was when it was trained
        config.out_dir, config.name = str(event.run_dir.parent), event.run_dir.name
        self.query_one(ConfigPane).show_config(config, str(event.run_dir / "config.toml"))
        self.action_show_pane("train")
        await train.start_run(config, resume=True)

    def on_runs_pane_chat(self, event: RunsPane.Chat) -> None:
        self.query_one(ChatPane).use(str(event.run_dir))  # first: showing it would pick one
        self.action_show_pane("chat")

    # -- quitting --------------------------------------------------------------------------

    @work(exclusive=True, group="quit")
    async def action_quit(self) -> None:
        """Quit; a run still training is stopped or left training headless, as the user says."""
        if not await self.query_one(TrainPane).release():
            return
        await self.query_one(ChatPane).close()
        self.exit()


def _settle_heap() -> None:
    """Move the objects of the built app out of the garbage collector's sight.

    Every widget, style and binding lives as long as the app; a full collection walking them
    all took up to 150 ms, landing on a random key press (measured by bench/bench_studio.py).
    Frozen, they are never scanned again, and collections take a few milliseconds.
    """
    gc.collect()
    gc.freeze()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """`gpt-studio [--config PATH] [--follow RUN_DIR]`: a bad argument is one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog="gpt-studio",
        description="A terminal studio to configure, train, watch and talk to GPT models.",
    )
    parser.add_argument("--config", metavar="PATH", help="a TOML config to open, e.g. my.toml")
    parser.add_argument(
        "--follow",
        metavar="RUN_DIR",
        help="watch a run started elsewhere (python -m engine.train ...) from its metrics.jsonl",
    )
    parser.add_argument("--version", action="version", version=f"gpt-studio {__version__}")
    args = parser.parse_args(argv)
    config = load(Path(args.config)) if args.config else None
    source = args.config or ""
    follow = Path(args.follow) if args.follow else None
    if follow is not None:
        if not follow.is_dir():
            raise UsageError(
                f"--follow {follow}: no such run directory; give a run folder such as runs/tiny"
            )
        if config is None and (follow / "config.toml").is_file():
            config, source = load(follow / "config.toml"), str(follow / "config.toml")
    StudioApp(config, source, follow=follow).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
