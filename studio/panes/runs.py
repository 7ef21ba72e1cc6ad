"""The Runs pane: every run under the config's out_dir; open one to see its curves; resume it
or chat with it.

Runs are read from disk (engine.contract.rundir), never from memory, so a run trained headless on this
machine, or copied from a server, shows the same as one the studio started. An open run is
followed: its curves grow while its metrics.jsonl does.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Label, Static

from engine.contract import events as p
from engine.contract.render import sample_block
from engine.contract.rundir import MetricsTail, RunDir, RunInfo, list_runs
from studio.widgets.charts import RunCharts

REFRESH_S = 3.0
FOLLOW_S = 1.0
COLUMNS = ("run", "model", "steps", "best val loss", "state", "started")


class RunsPane(Vertical):
    """A table of runs above the curves of the one that is open."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", tooltip="Show the run's curves and latest sample"),
        Binding("r", "resume", "Resume", tooltip="Continue training it from its latest checkpoint"),
        Binding("c", "chat", "Chat", tooltip="Talk to its best checkpoint"),
        Binding("f5", "refresh", "Refresh", tooltip="Read the runs folder again"),
    ]

    class Resume(Message):
        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    class Chat(Message):
        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.out_dir = Path("runs")
        self.runs: list[RunInfo] = []
        self.opened: Path | None = None
        self._tail: MetricsTail | None = None
        self._last_sample: p.Sample | None = None

    def compose(self) -> ComposeResult:
        yield Label("", id="runs-title", markup=False)
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="runs-detail-head"):
            yield Label("Open a run (Enter) to see its curves", id="runs-open-title", markup=False)
        yield RunCharts(id="runs-charts")
        yield Static("", id="runs-sample", markup=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.set_interval(REFRESH_S, self._refresh_if_shown)
        self.set_interval(FOLLOW_S, self._follow)
        self.action_refresh()

    def set_out_dir(self, out_dir: str) -> None:
        if Path(out_dir) != self.out_dir:
            self.out_dir = Path(out_dir)
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
        self.runs = runs
        where = self.out_dir.resolve()
        self.query_one("#runs-title", Label).update(
            f"{len(runs)} run(s) in {where}" if runs else f"no runs in {where} yet"
        )
        table = self.query_one(DataTable)
        chosen = self._chosen_path()
        table.clear()
        for run in runs:
            best = f"{run.best_val:.4f}" if run.best_val is not None else "-"
            steps = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            table.add_row(run.name, run.shape, steps, best, run.state, run.date, key=str(run.path))
        if chosen is not None:
            keys = [str(r.path) for r in runs]
            if str(chosen) in keys:
                table.move_cursor(row=keys.index(str(chosen)), animate=False)

    def _chosen_path(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.runs or table.row_count == 0:
            return None
        row = min(table.cursor_row, len(self.runs) - 1)
        return self.runs[row].path if row >= 0 else None

    def _chosen(self) -> RunInfo | None:
        path = self._chosen_path()
        return next((r for r in self.runs if r.path == path), None)

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
        self._tail = RunDir(run.path).tail()
        self._last_sample = None
        self.query_one(RunCharts).clear()
        self.query_one("#runs-sample", Static).update("")
        self.query_one("#runs-open-title", Label).update(
            f"{run.name}: {run.shape}, {run.step} steps, best val loss "
            + (f"{run.best_val:.4f}" if run.best_val is not None else "-")
            + f", {run.state} · r resume · c chat"
        )
        self._follow()

    def _follow(self) -> None:
        if self._tail is None:
            return
        events = self._tail.read_new()
        charts = self.query_one(RunCharts)
        for event in events:
            charts.add(event)
            if isinstance(event, p.Sample) and not event.id:
                self._last_sample = event
        if events and self._last_sample is not None:
            s = self._last_sample
            self.query_one("#runs-sample", Static).update(f"latest sample, {sample_block(s)}")

    def action_resume(self) -> None:
        run = self._chosen()
        if run is None:
            return
        if not run.checkpoints:
            self.notify(
                f"{run.name} has no checkpoint to continue from.", severity="error", markup=False
            )
            return
        self.post_message(self.Resume(run.path))

    def action_chat(self) -> None:
        run = self._chosen()
        if run is None:
            return
        if not run.checkpoints:
            self.notify(f"{run.name} has no checkpoint yet.", severity="error", markup=False)
            return
        self.post_message(self.Chat(run.path))
