"""The `gpt-studio` app: a frame of panes, the command line that opens it, and the palette.

The app stays small: each pane owns its widgets, bindings and styling; this module arranges
panes, turns their bindings into command-palette entries, routes the messages panes send up to
the panes that need them, and handles the command line.

Data flows down by attributes and up by messages (studio.messages). One config flows through
it: the Config pane edits it and posts `ConfigChanged`; the App keeps the current one in its
`config` reactive, which the Dataset, Train, Chat and Runs panes watch. The Dataset pane's
choices go into the Config pane's form as `ValuesChosen`. Which run trains now is `live_run`
(and whether it is chat-tuned, `live_chat`); a fine-tune set up in the Runs pane reaches the
Config pane as `FineTune`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import CommandPalette
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Header, TabbedContent, TabPane

from engine.contract import __version__
from engine.contract.config import Config, ConfigError, load, save
from engine.contract.errors import UsageError, cli_entry
from engine.contract.rundir import RunDir
from studio.machine import last_config_path
from studio.messages import (
    AskLive,
    AttachRun,
    ChatWith,
    ConfigChanged,
    ConfigState,
    FineTune,
    FixConfig,
    ResumeRun,
    RunChanged,
    SampleAnswered,
    ValuesChosen,
    VocabKnown,
)
from studio.panes.chat import ChatPane
from studio.panes.config import ConfigPane
from studio.panes.dataset import DatasetPane
from studio.panes.runs import RunsPane
from studio.panes.train import RunState, TrainPane
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
        HERE / "widgets/runview.tcss",
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

    config: reactive[ConfigState | None] = reactive(None, init=False)
    """The Config pane's config and its faults: the one every pane watches."""
    live_run: reactive[str | None] = reactive(None, init=False)
    """The name of the run the Train pane is training now, if any."""
    live_chat: reactive[bool] = reactive(False, init=False)
    """Whether that run is chat-tuned (its samples answer as the assistant)."""

    def __init__(
        self,
        config: Config | None = None,
        source: str = "",
        *,
        follow: Path | None = None,
        attach: str | None = None,
    ) -> None:
        super().__init__()
        self._initial = (config, source)
        self.follow_dir = follow
        self.attach_to = attach  # a run folder or a control address
        self._remember: Timer | None = None

    def get_default_screen(self) -> Screen:
        return PanesScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Header()
        start = "train" if self.follow_dir or self.attach_to else "config"
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

    # the panes, typed
    @property
    def config_pane(self) -> ConfigPane:
        return self.query_one(ConfigPane)

    @property
    def dataset_pane(self) -> DatasetPane:
        return self.query_one(DatasetPane)

    @property
    def train_pane(self) -> TrainPane:
        return self.query_one(TrainPane)

    @property
    def chat_pane(self) -> ChatPane:
        return self.query_one(ChatPane)

    @property
    def runs_pane(self) -> RunsPane:
        return self.query_one(RunsPane)

    @property
    def tabs(self) -> TabbedContent:
        return self.query_one(TabbedContent)

    def on_mount(self) -> None:
        if self.follow_dir is not None:
            self.train_pane.follow(self.follow_dir)
        elif self.attach_to is not None:
            self.train_pane.attach(self.attach_to)
        self.action_show_pane(self.tabs.active)
        self.call_after_refresh(_settle_heap)

    # -- panes -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_pane":  # not from under a dialog, but from the palette
            return isinstance(self.screen, (PanesScreen, CommandPalette))
        return True

    def action_show_pane(self, pane: str) -> None:
        """Switch to a pane and put the cursor in it, so its keys are live in the footer."""
        self.tabs.active = pane
        self._focus_pane(pane)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id or ""
        if pane in PANES and not self._focus_is_in(pane):
            self._focus_pane(pane)
        if pane == "runs":
            self.runs_pane.action_refresh()
        elif pane == "chat":
            self.chat_pane.refresh_models()

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

    # -- one config, watched ----------------------------------------------------------------

    def on_config_changed(self, message: ConfigChanged) -> None:
        self.config = message.state
        if message.state.valid:  # remembered for the next session, a second after typing stops
            if self._remember is not None:
                self._remember.stop()
            self._remember = self.set_timer(1.0, self._save_last_config)

    def _save_last_config(self) -> None:
        if self.config is None:
            return
        path = last_config_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(self.config.config, path, overwrite=True)
        except (OSError, ConfigError):
            pass  # remembering is a convenience: a read-only home costs nothing else

    def on_vocab_known(self, message: VocabKnown) -> None:
        self.config_pane.know_vocab(message.config, message.vocab_size)

    def on_values_chosen(self, message: ValuesChosen) -> None:
        self.config_pane.set_values(message.values)

    # -- the training run ------------------------------------------------------------------

    def on_fix_config(self, message: FixConfig) -> None:
        self.tabs.active = "config"
        self.config_pane.focus_field(message.key)

    def on_run_changed(self, message: RunChanged) -> None:
        self.live_run = message.name
        self.live_chat = message.chat_tuned
        self.runs_pane.action_refresh()

    def on_sample_answered(self, message: SampleAnswered) -> None:
        self.chat_pane.live_answer(message.sample)

    def on_ask_live(self, message: AskLive) -> None:
        if not self.train_pane.ask_sample(message.request):
            self.chat_pane.live_refused(message.request.id)

    # -- runs on disk ----------------------------------------------------------------------

    def on_resume_run(self, message: ResumeRun) -> None:
        """Load the run's own config into the form and continue it in the Train pane."""
        train = self.train_pane
        if train.state is not RunState.IDLE:
            self.notify("A run is already going in the Train pane.", severity="error")
            return
        try:
            config = load(message.run_dir / "config.toml")
        except ConfigError as err:
            self.notify(str(err), title="Cannot resume", severity="error", markup=False)
            return
        # the run folder as found, whatever the working directory was when it was trained
        config.out_dir, config.name = str(message.run_dir.parent), message.run_dir.name
        self.config_pane.show_config(config, str(message.run_dir / "config.toml"))
        self.action_show_pane("train")
        train.start_run(config, resume=True)

    def on_attach_run(self, message: AttachRun) -> None:
        if self.train_pane.attach(message.run_dir):
            self.action_show_pane("train")

    def on_fine_tune(self, message: FineTune) -> None:
        """A fine-tune set up in the Runs pane: shown in the form, to check and then start."""
        config = message.config
        self.config_pane.show_config(config, message.source)
        self.action_show_pane("config")
        self.notify(
            f"{config.name}: fine-tunes {Path(config.train.init_from).name} on "
            f"{config.data.source}; check the form, then press s in the Train pane (ctrl+t).",
            title="Fine-tune set up",
            markup=False,
        )

    def on_chat_with(self, message: ChatWith) -> None:
        self.chat_pane.use(str(message.run_dir))  # first: showing it would pick one
        self.action_show_pane("chat")

    # -- quitting --------------------------------------------------------------------------

    @work(exclusive=True, group="quit")
    async def action_quit(self) -> None:
        """Quit; a run still training is stopped or left training headless, as the user says."""
        train = self.train_pane
        if not await train.release():
            return
        await self.chat_pane.close()
        if train.left is not None:  # said on the terminal once the studio is gone
            self.exit(message=f"{train.left.name} trains on; control it again with: "
                      f"gpt-studio --attach {train.left}")  # fmt: skip
        else:
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
    """`gpt-studio [--config PATH] [--follow RUN_DIR | --attach RUN_DIR]`: a bad argument is one
    line, exit 2."""
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
    parser.add_argument(
        "--attach",
        metavar="RUN_DIR|ADDRESS",
        help="watch and command a run that is training (left by a studio, or started headless): "
        "its run folder, or its control address, e.g. unix:/tmp/tiny.sock forwarded by ssh -L",
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
    attach = args.attach
    if attach is not None:
        if follow is not None:
            raise UsageError("--attach and --follow: give one; --follow only reads metrics.jsonl")
        folder = Path(attach)
        if folder.is_dir():
            if RunDir(folder).control_record() is None:
                raise UsageError(
                    f"--attach {folder}: it holds no control.json, so no run trains there now; "
                    f"to see its curves: gpt-studio --follow {folder}"
                )
            if config is None and (folder / "config.toml").is_file():
                config, source = load(folder / "config.toml"), str(folder / "config.toml")
        elif not attach.startswith(("unix:", "tcp:")):
            raise UsageError(
                f"--attach {attach}: no such run folder; give a run folder such as runs/tiny "
                "or a control address such as unix:/tmp/tiny.sock"
            )
    if config is None and last_config_path().is_file():  # where the last session left off
        with contextlib.suppress(ConfigError):  # one that no longer loads is forgotten
            config, source = load(last_config_path()), str(last_config_path())
    StudioApp(config, source, follow=follow, attach=attach).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
