"""The Runs pane: every run under the config's out_dir; open one to see its curves; resume it,
chat with it, or fine-tune it to chat.

Runs are read from disk (engine.contract.rundir), never from memory, so a run trained headless on this
machine, or copied from a server, shows the same as one the studio started. An open run is
shown in the same RunView as the Train pane's and followed by a worker: its curves grow while
its metrics.jsonl does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label

from engine.contract.config import ConfigError
from engine.contract.finetune import CHAT_DATA_HINT, SFT_NAME, fine_tune_config, preset_data
from engine.contract.render import shown_path
from engine.contract.rundir import RunCurves, RunDir, RunInfo, list_runs, read_curves
from studio.jobs import MetricsFollower, first_error, run_engine
from studio.messages import AttachRun, ChatWith, ConfigState, FineTune, ResumeRun, RunEvents
from studio.panes.train.starting import free_name, holds_run
from studio.widgets.charts import RunCharts
from studio.widgets.compare import CompareView
from studio.widgets.dialogs import PathDialog
from studio.widgets.runview import RunView

REFRESH_S = 3.0
FOLLOW_S = 1.0
COLUMNS = ("run", "model", "steps", "best val loss", "state", "started", "compare")
MARK = "●"


class RunsPane(Vertical):
    """A table of runs above the curves of the one that is open, or of the marked ones."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", tooltip="Show the run's curves and latest sample"),
        Binding("a", "attach", "Attach", tooltip="Watch and command it while it trains"),
        Binding("r", "resume", "Resume", tooltip="Continue training it from its latest checkpoint"),
        Binding("c", "chat", "Chat", tooltip="Talk to its best checkpoint"),
        Binding("f", "fine_tune", "Fine-tune", tooltip="Teach it to chat: SFT on conversations"),
        Binding("space", "mark", "Mark", tooltip="Mark the run for a comparison, or unmark it"),
        Binding("v", "compare", "Compare", tooltip="Overlay the marked runs' curves; diff configs"),
        Binding("t", "x_axis", "x: step/tokens", tooltip="Compare by step or by tokens seen"),
        Binding("l", "log_scale", "Log y", tooltip="Charts: log-scale y axis, or linear again"),
        Binding("e", "smooth", "Smooth", tooltip="Charts: EMA-smoothed curves over the raw ones"),
        Binding("f5", "refresh", "Refresh", tooltip="Read the runs folder again"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.out_dir = Path("runs")
        self.runs: list[RunInfo] = []
        self.opened: Path | None = None
        self.follower: MetricsFollower | None = None
        self.marked: set[Path] = set()  # runs chosen for a comparison

    def compose(self) -> ComposeResult:
        yield Label("", id="runs-title", markup=False)
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="runs-detail-head"):
            yield Label("Open a run (Enter) to see its curves", id="runs-open-title", markup=False)
        yield RunView(id="runs-view")
        yield CompareView(id="runs-compare")

    @property
    def compare(self) -> CompareView:
        return self.query_one(CompareView)

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    @property
    def view(self) -> RunView:
        return self.query_one(RunView)

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.table.add_column(column, key=column)
        self.compare.display = False
        self.set_interval(REFRESH_S, self._refresh_if_shown)
        self.watch(self.app, "config", self._config_changed)
        self.action_refresh()

    def _config_changed(self, state: ConfigState | None) -> None:
        if state is not None and Path(state.config.out_dir) != self.out_dir:
            self.out_dir = Path(state.config.out_dir)
            self.action_refresh()

    # -- the table -------------------------------------------------------------------------

    def _refresh_if_shown(self) -> None:
        if self.region.area > 0:  # an inactive tab is not laid out, so has no region
            self.action_refresh()

    @work(exclusive=True, group="runs-list", thread=True)
    def action_refresh(self) -> None:
        """Read the runs folder (in a thread: it opens a file or two per run)."""
        runs = list_runs(self.out_dir)
        self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs: list[RunInfo]) -> None:
        titles = self.query("#runs-title").results(Label)
        title = next(titles, None)
        if title is None:  # the studio closed while the folder was being read
            return
        self.runs = runs
        where = shown_path(self.out_dir)
        title.update(f"{len(runs)} run(s) in {where}" if runs else f"no runs in {where} yet")
        table = self.table
        chosen = self._chosen_path()
        table.clear()
        for run in runs:
            best = f"{run.best_val:.4f}" if run.best_val is not None else "-"
            steps = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            mark = MARK if run.path in self.marked else ""
            table.add_row(
                run.name, run.shape, steps, best, run.state, run.date, mark, key=str(run.path)
            )
        if chosen is not None:
            keys = [str(r.path) for r in runs]
            if str(chosen) in keys:
                table.move_cursor(row=keys.index(str(chosen)), animate=False)

    def _chosen_path(self) -> Path | None:
        table = self.table
        if not self.runs or table.row_count == 0:
            return None
        row = min(table.cursor_row, len(self.runs) - 1)
        return self.runs[row].path if row >= 0 else None

    def _chosen(self) -> RunInfo | None:
        path = self._chosen_path()
        return next((r for r in self.runs if r.path == path), None)

    def _chosen_with_checkpoint(self, missing: str) -> RunInfo | None:
        """The chosen run if it has a checkpoint; else None, after saying it `missing`."""
        run = self._chosen()
        if run is not None and not run.checkpoints:
            self.notify(f"{run.name} has {missing}.", severity="error", markup=False)
            return None
        return run

    # -- actions ---------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        """Show the chosen run's curves from its metrics.jsonl, and keep following it."""
        run = self._chosen()
        if run is None:
            self.notify("No run chosen: train one first, or pick a row.", severity="warning")
            return
        self.opened = run.path
        self.compare.display, self.view.display = False, True
        self.view.reset(run.name, run.path)
        self.query_one("#runs-open-title", Label).update(
            f"{run.name}: {run.shape}, {run.step} steps, best val loss "
            + (f"{run.best_val:.4f}" if run.best_val is not None else "-")
            + f", {run.state} · "
            + ("a attach · " if run.attachable else "r resume · ")
            + "c chat · f fine-tune"
        )
        self.follower = MetricsFollower(self, run.path, FOLLOW_S)
        self._follow(self.follower)

    @work(group="runs-follow", exclusive=True, exit_on_error=False)
    async def _follow(self, follower: MetricsFollower) -> None:
        await follower.run()

    def on_run_events(self, message: RunEvents) -> None:
        message.stop()
        self.view.add(message.events)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "x_axis":
            return self.compare.display
        if action == "compare":
            return len(self.marked) >= 2
        return True

    def action_mark(self) -> None:
        run = self._chosen()
        if run is None:
            return
        self.marked ^= {run.path}
        mark = MARK if run.path in self.marked else ""
        self.table.update_cell(str(run.path), "compare", mark)
        self.refresh_bindings()

    @work(exclusive=True, group="runs-compare", thread=True)
    def action_compare(self) -> None:
        """Read the marked runs' whole histories (in a thread: whole files) and overlay them."""
        paths = [r.path for r in self.runs if r.path in self.marked]
        if len(paths) < 2:
            self.app.call_from_thread(
                self.notify, "Mark two runs or more first (space).", severity="warning"
            )
            return
        curves = [read_curves(path) for path in paths]
        self.app.call_from_thread(self._show_comparison, curves)

    def _show_comparison(self, curves: list[RunCurves]) -> None:
        self.workers.cancel_group(self, "runs-follow")
        self.opened, self.follower = None, None
        self.view.display, self.compare.display = False, True
        self.compare.show(curves)
        self.query_one("#runs-open-title", Label).update(
            f"{len(curves)} runs compared · Enter opens one · space marks · t x axis"
        )
        self.refresh_bindings()

    def action_x_axis(self) -> None:
        self.compare.toggle_x()

    def action_log_scale(self) -> None:
        self.view.charts.toggle_log()
        chart = self.compare.chart
        chart.set_view(log_y=not chart.log_y, smooth=chart.smooth)

    def action_smooth(self) -> None:
        self.view.charts.toggle_smooth()
        chart = self.compare.chart
        chart.set_view(log_y=chart.log_y, smooth=0.0 if chart.smooth else RunCharts.SMOOTH)

    def action_attach(self) -> None:
        run = self._chosen()
        if run is None:
            return
        if not run.attachable:
            self.notify(
                f"{run.name} is not training now: Enter shows its curves, r resumes it.",
                severity="error",
                markup=False,
            )
            return
        self.post_message(AttachRun(run.path))

    def action_resume(self) -> None:
        run = self._chosen_with_checkpoint("no checkpoint to continue from")
        if run is None:
            return
        writer = RunDir(run.path).writer()  # now, not when the list was read
        if writer is not None:  # resuming would make a second writer of one run
            self.notify(
                f"{run.name} is training elsewhere (process {writer}); press a to attach to "
                "it instead.", severity="warning", markup=False,
            )  # fmt: skip
            return
        self.post_message(ResumeRun(run.path))

    def action_chat(self) -> None:
        run = self._chosen_with_checkpoint("no checkpoint yet")
        if run is None:
            return
        self.post_message(ChatWith(run.path))

    @work(exclusive=True, group="runs-fine-tune")
    async def action_fine_tune(self) -> None:
        """Ask for chat data, then open the Config pane on a fine-tune of the chosen run."""
        run = self._chosen_with_checkpoint("no checkpoint to fine-tune yet")
        if run is None:
            return
        default = preset_data()  # known to be conversations: no need to look inside
        data = default
        while True:
            answer = await self.app.push_screen_wait(
                PathDialog(
                    f"Fine-tune {run.name} to chat on: {CHAT_DATA_HINT}",
                    data,
                    action="Fine-tune",
                    placeholder=default,
                )
            )
            if not answer:
                return
            data = answer
            problem, include = ("", "") if data == default else await check_chat_data(data)
            if not problem:
                break
            self.notify(problem, title="Not chat data", severity="error", markup=False)
        name = f"{run.name}-chat"
        if holds_run(run.path.parent / name):
            name = free_name(run.path.parent, name)
        try:
            config = fine_tune_config(run.path, data, name=name, include=include)
        except ConfigError as err:
            self.notify(str(err), title="Cannot fine-tune", severity="error", markup=False)
            return
        self.post_message(FineTune(config, f"{SFT_NAME} on {run.name}"))


async def check_chat_data(source: str) -> tuple[str, str]:
    """("", include) when the engine finds conversations in `source`, else (one line why, "").

    The engine decides (`python -m engine.data inspect`), by the rule training applies; a
    folder is looked into for .jsonl files, then for parquet ones."""
    folder = Path(source).expanduser().is_dir()
    problem = ""
    for include in ("*.jsonl", "*.parquet") if folder else ("",):
        args = ["inspect", source, "--json", *(["--include", include] if include else [])]
        exit, out = await run_engine("engine.data", *args)
        if exit.code != 0:
            problem = problem or first_error(exit)
            continue
        try:
            chat = bool(json.loads(out).get("chat"))
        except (ValueError, AttributeError):
            return "the engine's answer about the data was not JSON", ""
        if chat:
            return "", include
        return f"{source} holds plain text, not conversations; give {CHAT_DATA_HINT}", ""
    return problem, ""
