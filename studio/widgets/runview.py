"""One run as it reports: progress and ETA, its figures, four charts, the latest samples, a log.

The Train pane shows the run it started (or follows) in one, and the Runs pane the run that is
open, so a run reads the same wherever it is seen. Whoever owns the view feeds it events with
`add`; they land in an inbox that a timer empties ten times a second, so a flood of events costs
a few widget updates per tenth of a second, and charts redraw on their own slower clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, RichLog, Static

from engine.contract import events as p
from engine.contract.render import duration, event_line, human, progress_line, sample_block
from studio.widgets.charts import RunCharts

FLUSH_S = 0.1
SAMPLES_KEPT = 6
NO_SAMPLES = "none yet"

E = TypeVar("E", bound=p.Event)


class RunView(Vertical):
    """Everything a run has reported, shown; `live` says whether an ETA still means anything."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.run_name = ""
        self.run_dir: Path | None = None
        self.step = 0
        self.max_steps = 0
        self.events_seen = 0
        self.live = False  # the run is going: show its ETA
        self.samples: deque[p.Sample] = deque(maxlen=SAMPLES_KEPT)
        self.log_lines: list[str] = []  # everything written to the log, unwrapped
        self._inbox: list[p.Event] = []
        self._unwritten: list[Text] = []  # log lines waiting for the log to have a width
        self._samples_new = False  # a sample asked for by hand waits to be shown
        self._last: dict[type[p.Event], p.Event] = {}

    # -- the widgets -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(classes="run-progress-row"):
            yield ProgressBar(total=1, show_eta=False, classes="run-progress")  # idle: no pulse
            yield Label("", classes="run-eta", markup=False)
        yield Static(classes="run-figures", markup=False)
        yield RunCharts(classes="run-charts")
        with Horizontal(classes="run-bottom"):
            with Vertical(classes="run-samples-box"):
                yield Label("Latest samples", classes="box-title")
                yield Static(NO_SAMPLES, classes="run-samples", markup=False)
            with Vertical(classes="run-log-box"):
                yield Label("Events", classes="box-title")
                yield RichLog(
                    classes="run-log", wrap=True, markup=False, max_lines=2000, min_width=20
                )

    @property
    def charts(self) -> RunCharts:
        return self.query_one(RunCharts)

    @property
    def progress(self) -> ProgressBar:
        return self.query_one(ProgressBar)

    @property
    def eta(self) -> Label:
        return self.query_one(".run-eta", Label)

    @property
    def figures(self) -> Static:
        return self.query_one(".run-figures", Static)

    @property
    def samples_text(self) -> Static:
        return self.query_one(".run-samples", Static)

    @property
    def log(self) -> RichLog:
        return self.query_one(RichLog)

    def on_mount(self) -> None:
        self.set_interval(FLUSH_S, self.flush)

    # -- data in ---------------------------------------------------------------------------

    def reset(self, name: str, run_dir: Path | None, *, waiting: bool = False) -> None:
        """Forget the run shown; `waiting`: the bar pulses until the first figures arrive."""
        self.run_name, self.run_dir = name, run_dir
        self.step = self.max_steps = self.events_seen = 0
        self.samples.clear()
        self._last.clear()
        self._inbox.clear()
        self.log_lines.clear()
        self._unwritten.clear()
        self.log.clear()
        self.charts.clear()
        self.samples_text.update(NO_SAMPLES)
        self.eta.update("")
        self.figures.update("")
        self.progress.update(total=None if waiting else 1, progress=0)

    def add(self, events: Iterable[p.Event]) -> None:
        """Take events: the figures they carry count at once, their lines show at the next flush."""
        charts = self.charts
        for event in events:
            self.events_seen += 1
            self._last[type(event)] = event
            self._inbox.append(event)
            charts.add(event)  # marks a chart stale; its timer redraws it
            if isinstance(event, p.Start):
                self.max_steps, self.step = event.max_steps, event.resumed_from
                on_gpu = event.device.startswith("cuda")
                charts.set_memory_title("GPU memory GB" if on_gpu else "memory GB (RSS)")
            elif isinstance(event, (p.Step, p.Paused, p.Resumed)):
                self.step = event.step  # a pause says the very step it holds at
            elif isinstance(event, p.Sample) and not event.id:
                self.samples.append(event)

    def show_sample(self, sample: p.Sample) -> None:
        """A sample asked for by hand: shown with the run's own, at the next flush."""
        self.samples.append(sample)
        self._samples_new = True

    def last(self, kind: type[E]) -> E | None:
        """The latest event of a kind that was shown, e.g. `last(p.Done)`."""
        event = self._last.get(kind)
        return event if isinstance(event, kind) else None

    def write(self, text: str, *, error: bool = False) -> None:
        """A line in the run's log (the owner's own news: asked to pause, exited, ...)."""
        self.log_lines.append(text)
        self._unwritten.append(Text(text, "bold red" if error else ""))
        self._write_out()

    def _write_out(self) -> None:
        # a log wraps a line once, at its width when written: a hidden pane has none, so its
        # lines wait until it is shown rather than wrap at the narrowest width
        log = self.log
        if self._unwritten and log.region.width:
            for line in self._unwritten:
                log.write(line, scroll_end=True)
            self._unwritten.clear()

    def ended(self) -> None:
        """The run is over: no ETA, and a bar that never got a total stops pulsing."""
        self.flush()
        self.live = False
        if not self.max_steps:
            self.progress.update(total=1, progress=0)
        self._show_figures()

    # -- showing ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Apply the events that arrived since the last flush, in order."""
        self._write_out()
        if not self._inbox and not self._samples_new:
            return
        events, self._inbox = self._inbox, []
        for event in events:
            if isinstance(event, p.Progress):
                self._preparing(event)
            line = describe(event)
            if line is not None:
                bad = isinstance(event, p.Error) or (
                    isinstance(event, p.Log) and event.level != "info"
                )
                self.write(line, error=bad)
        if self._samples_new or any(isinstance(e, p.Sample) and not e.id for e in events):
            self._samples_new = False
            self._show_samples()
        self._show_figures()

    def _preparing(self, event: p.Progress) -> None:
        """Before the first step the engine prepares its data: show that on the bar."""
        if self.max_steps:
            return
        self.progress.update(total=event.total, progress=event.done)
        self.eta.update(progress_line(event))

    def _show_samples(self) -> None:
        latest = self.samples[-1].step
        shown = [s for s in self.samples if s.step == latest] or [self.samples[-1]]
        self.samples_text.update("\n\n".join(sample_block(s) for s in shown))

    def _show_figures(self) -> None:
        # short lines of fixed size while events stream in, so no relayout each time
        if self.max_steps:
            self.progress.update(total=self.max_steps, progress=self.step)
        step, evaluation = self.last(p.Step), self.last(p.Eval)
        figures = []
        if step is not None:
            eta = duration(step.eta_s) if self.live else "-"
            self.eta.update(f"step {self.step}/{self.max_steps} · eta {eta}", layout=False)
            figures += [
                f"loss {step.loss:.4f}",
                f"lr {step.lr:.2e}",
                f"{human(step.tokens_per_s)} tok/s",
                f"{step.step_ms:.0f} ms/step",
                f"mem {step.mem_gb:.2f} GB",
            ]
        if evaluation is not None:
            figures.append(f"val {evaluation.val_loss:.4f} (step {evaluation.step})")
        self.figures.update("  ·  ".join(figures), layout=False)


def describe(event: p.Event) -> str | None:
    """The log line an event gets; steps are in the charts and figures, not the log."""
    if isinstance(event, p.Start):
        resumed = f", continuing after step {event.resumed_from}" if event.resumed_from else ""
        return (
            f"{event.run}: {human(event.params)} parameters on {event.device} ({event.dtype}), "
            f"{event.max_steps} steps of {human(event.tokens_per_step)} tokens{resumed}"
        )
    if isinstance(event, p.Eval):
        return f"step {event.step}: val loss {event.val_loss:.4f} (perplexity {event.ppl:.2f})"
    if isinstance(event, p.Checkpoint):
        return f"step {event.step}: saved {event.path}" + (" (best so far)" if event.best else "")
    if isinstance(event, (p.Done, p.Error, p.Log, p.Paused, p.Resumed, p.DataReady, p.Adjusted)):
        return event_line(event, 0)  # as the engine's console writes it
    if isinstance(event, p.Sample) and event.id:
        return f"step {event.step}: answered sample request {event.id}"
    return None
