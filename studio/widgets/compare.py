"""Several runs side by side: their train and validation loss on one chart (x by step or by
tokens seen), and a table of the config keys in which they differ."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label

from engine.contract.rundir import RunCurves
from studio.command import flatten
from studio.widgets.charts import Chart, Series


def config_differences(configs: list[dict]) -> list[tuple[str, list[str]]]:
    """The dotted keys whose values are not the same in every config, with each one's value
    ("-" where a config lacks the key); the run's name and folder are left out."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - {"name", "out_dir"})
    rows = []
    for key in keys:
        values = [f.get(key, "-") for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [str(v) for v in values]))
    return rows


class CompareView(Vertical):
    """The chosen runs' loss curves overlaid, and how their configs differ."""

    DEFAULT_CSS = """
    CompareView { height: 1fr; }
    CompareView #compare-body { height: 1fr; }
    CompareView #compare-chart { width: 2fr; min-height: 12; }
    CompareView #compare-table { width: 1fr; height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.runs: list[RunCurves] = []
        self.x_by = "step"  # or "tokens"

    def compose(self) -> ComposeResult:
        yield Label("", id="compare-title", markup=False)
        with Horizontal(id="compare-body"):
            yield Chart("loss", (), lambda y: f"{y:.2f}", legend=True, id="compare-chart")
            yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")

    @property
    def chart(self) -> Chart:
        return self.query_one(Chart)

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def show(self, runs: list[RunCurves]) -> None:
        self.runs = runs
        self._plot()
        table = self.table
        table.clear(columns=True)
        table.add_column("config key", key="key")
        for run in runs:
            table.add_column(run.name, key=str(run.path))
        differences = config_differences([r.config for r in runs])
        for key, values in differences:
            table.add_row(key, *values, key=key)
        if not differences:
            table.add_row("(the configs are the same)", *["" for _ in runs])

    def toggle_x(self) -> None:
        self.x_by = "tokens" if self.x_by == "step" else "step"
        self._plot()

    def _plot(self) -> None:
        series = []
        for run in self.runs:
            for kind, points, marker in (("train", run.train, "braille"), ("val", run.val, "dot")):
                line = Series(f"{run.name} {kind}", marker)
                for step, loss in points:
                    line.add(step * run.tokens_per_step if self.x_by == "tokens" else step, loss)
                series.append(line)
        self.chart.smoothed = frozenset(s.name for s in series if s.name.endswith(" train"))
        self.chart.set_series(series)
        axis = "tokens seen" if self.x_by == "tokens" else "step"
        names = ", ".join(r.name for r in self.runs)
        self.query_one("#compare-title", Label).update(
            f"comparing {names} · x: {axis} (t switches) · train ⣿ val •"
        )
