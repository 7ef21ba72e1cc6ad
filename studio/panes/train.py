"""The Train pane: start the Config pane's config, watch it learn, pause, stop, save.

The run is a subprocess (`python -m engine.train`) reporting to a private socket (studio.link);
this pane sends it commands and shows what it reports. Events from the socket only land in an
inbox; a timer empties the inbox ten times a second, so a flood of events costs a few widget
updates per tenth of a second, and charts redraw on their own slower clock.

The same pane follows a run it did not start (`gpt-studio --follow RUN_DIR`): events then come
from the run's metrics.jsonl as it grows, and there is nothing to command.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, Label, ProgressBar, RichLog, Static

from engine.contract import events as p
from engine.contract.config import Config
from engine.contract.render import duration, event_line, human, progress_line, sample_block
from engine.contract.rundir import MetricsTail, RunDir
from studio.jobs import Exit, TrainJob, first_error
from studio.widgets.charts import RunCharts
from studio.widgets.dialogs import ChoiceDialog

FLUSH_S = 0.1
FOLLOW_S = 0.5
SAMPLES_KEPT = 6

# what the pane is doing; the footer offers only the keys that make sense in each
IDLE, STARTING, TRAINING, PAUSED, STOPPING, FOLLOWING = (
    "idle", "starting", "training", "paused", "stopping", "following",
)  # fmt: skip


def holds_run(run_dir: Path) -> bool:
    """What engine.train refuses to start over (the one rule in RunDir)."""
    return RunDir(run_dir).is_run()


def free_name(out_dir: Path, name: str) -> str:
    """`name-2`, `name-3`, ...: the first name whose run directory holds no run."""
    stem, _, number = name.rpartition("-")
    base, n = (stem, int(number)) if stem and number.isdigit() else (name, 1)
    while holds_run(out_dir / f"{base}-{n + 1}"):
        n += 1
    return f"{base}-{n + 1}"


class TrainPane(Vertical):
    """One training run at a time: its controls, status, charts, samples and log."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start", tooltip="Train the Config pane's config"),
        Binding("p", "pause", "Pause", tooltip="Hold the run between two steps"),
        Binding("p", "resume", "Resume", tooltip="Continue the paused run"),
        Binding("x", "stop", "Stop", tooltip="Write a checkpoint, then end the run"),
        Binding("c", "save", "Save now", tooltip="Write a checkpoint now and go on"),
    ]

    state: reactive[str] = reactive(IDLE)
    """idle, starting, training, paused, stopping or following."""

    class FixConfig(Message):
        """Start was refused because this field is at fault: show it to the user."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class Renamed(Message):
        """The run was started under a new name (the old one held a run)."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    class SampleAnswered(Message):
        """A sample the studio asked for (it has a request id), for the Chat pane."""

        def __init__(self, sample: p.Sample) -> None:
            super().__init__()
            self.sample = sample

    class RunChanged(Message):
        """A run started or ended: the Chat and Runs panes care which one is live."""

        def __init__(self, name: str | None, run_dir: Path | None) -> None:
            super().__init__()
            self.name = name
            self.run_dir = run_dir

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.can_focus = True
        self.config: Config | None = None  # the Config pane's last valid config
        self.errors: dict[str, str] = {}  # and what is wrong with the form now
        self.job: TrainJob | None = None
        # argv for the engine's arguments; None: python -m engine.train (a benchmark or a test
        # puts a stand-in engine here)
        self.engine_command: Callable[[list[str]], list[str]] | None = None
        self.follow_tail: MetricsTail | None = None
        self.run_name = ""
        self.run_dir: Path | None = None
        self.step = 0
        self.max_steps = 0
        self.last_exit: Exit | None = None
        self.samples: deque[p.Sample] = deque(maxlen=SAMPLES_KEPT)
        self.events_seen = 0
        self.notes: list[str] = []  # what went wrong on the wire, as logged
        self.log_lines: list[str] = []  # everything written to the event log, unwrapped
        self._inbox: list[p.Event] = []
        self._last: dict[str, p.Event] = {}  # the latest event of each type, for the status

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="train-controls"):
            yield Button("Start", id="train-start", compact=True, tooltip="s")
            yield Button("Pause", id="train-pause", compact=True, tooltip="p")
            yield Button("Stop", id="train-stop", compact=True, tooltip="x")
            yield Button("Save now", id="train-save", compact=True, tooltip="c")
            yield Static(id="train-status", markup=False)
        with Horizontal(id="train-progress-row"):
            yield ProgressBar(total=1, show_eta=False, id="train-progress")  # not pulsing: idle
            yield Label("", id="train-eta", markup=False)
        yield Static(id="train-figures", markup=False)
        yield RunCharts(id="train-charts")
        with Horizontal(id="train-bottom"):
            with Vertical(id="train-samples-box"):
                yield Label("Live samples", classes="box-title")
                yield Static("none yet", id="train-samples", markup=False)
            with Vertical(id="train-log-box"):
                yield Label("Events", classes="box-title")
                yield RichLog(id="train-log", wrap=True, markup=False, max_lines=2000, min_width=20)

    def on_mount(self) -> None:
        self.set_interval(FLUSH_S, self._flush)
        self._show_status()

    # -- data in ---------------------------------------------------------------------------

    def show_config(self, config: Config, errors: dict[str, str]) -> None:
        """The Config pane's state, handed down by the app on every change."""
        self.config, self.errors = copy.deepcopy(config), dict(errors)
        if self.state == IDLE:
            self._show_status()

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self.state in (TRAINING, PAUSED)
        if action == "start":
            return self.state == IDLE
        if action == "pause":
            return self.state == TRAINING
        if action == "resume":
            return self.state == PAUSED
        if action in ("stop", "save"):
            return running
        return True

    def watch_state(self, state: str) -> None:
        self.refresh_bindings()
        paused = state == PAUSED
        pause = self.query_one("#train-pause", Button)
        pause.label = "Resume" if paused else "Pause"
        for button, allowed in (
            ("#train-start", self.check_action("start", ())),
            ("#train-pause", state in (TRAINING, PAUSED)),
            ("#train-stop", self.check_action("stop", ())),
            ("#train-save", self.check_action("save", ())),
        ):
            self.query_one(button, Button).disabled = not allowed
        self._show_status()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        action = {
            "train-start": "start",
            "train-pause": "resume" if self.state == PAUSED else "pause",
            "train-stop": "stop",
            "train-save": "save",
        }.get(event.button.id or "")
        if action:
            self.run_action(action)

    @work(exclusive=True, group="train-start")
    async def action_start(self, resume: bool = False) -> None:
        """Train the Config pane's config; a fault in the form blocks it, naming the field."""
        if self.state != IDLE:
            return
        if self.errors or self.config is None:
            self._refuse_invalid()
            return
        config = self.config
        if not resume and holds_run(config.run_dir):
            fresh = free_name(Path(config.out_dir), config.name)
            answer = await self.app.push_screen_wait(
                ChoiceDialog(
                    f"{config.run_dir} already holds a run. Continue it from its latest "
                    "checkpoint, or start a new run beside it?",
                    [("resume", "Continue it"), ("new", f"New run '{fresh}'")],
                )
            )
            if answer is None:
                return
            if answer == "new":
                config.name = fresh
                self.post_message(self.Renamed(fresh))
            resume = answer == "resume"
        await self.start_run(config, resume=resume)

    async def start_run(self, config: Config, *, resume: bool = False) -> None:
        """Start `config` as a training subprocess (continuing its run when `resume`)."""
        self._reset(config.name, config.run_dir)
        self.state = STARTING
        verb = "continuing" if resume else "starting"
        self._log(f"{verb} {config.name}: python -m engine.train ... in {Path.cwd()}")
        self.job = self._make_job()
        try:
            await self.job.start(config, resume=resume)
        except OSError as err:
            self._log(f"could not start the engine: {err}", error=True)
            self.job = None
            self.state = IDLE
            return
        self.post_message(self.RunChanged(config.name, config.run_dir))

    def _make_job(self) -> TrainJob:
        return TrainJob(self._receive, self._note, self._exited, command=self.engine_command)

    def action_pause(self) -> None:
        if self._send(p.Pause()):
            self._log("asked the engine to pause after this step")

    def action_resume(self) -> None:
        if self._send(p.Resume()):
            self._log("asked the engine to resume")

    def action_stop(self) -> None:
        if self._send(p.Stop()):
            self.state = STOPPING
            self._log("asked the engine to write a checkpoint and stop")

    def action_save(self) -> None:
        if self._send(p.Save()):
            self._log("asked the engine for a checkpoint now")

    def ask_sample(self, request: p.SampleRequest) -> bool:
        """Ask the live run for a sample; its answer comes back as SampleAnswered."""
        return self.state in (TRAINING, PAUSED) and self._send(request)

    def _send(self, command: p.Command) -> bool:
        if self.job is None or not self.job.send(command):
            self.notify(
                "The engine is not connected (yet); try again in a moment.",
                severity="warning",
                markup=False,
            )
            return False
        return True

    def _refuse_invalid(self) -> None:
        if not self.errors:
            self.notify("No valid config yet: fill in the Config pane first.", severity="error")
            return
        key, reason = next(iter(self.errors.items()))
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        message = f"{key}: {reason}{more}"
        self.query_one("#train-status", Static).update(f"cannot start: {message}")
        self.notify(message, title="Cannot start: fix this first", severity="error", markup=False)
        self.post_message(self.FixConfig(key))

    # -- the quit question -----------------------------------------------------------------

    async def release(self) -> bool:
        """Before the studio quits: stop the run, leave it training headless, or stay."""
        if self.job is None or not self.job.running:
            return True
        answer = await self.app.push_screen_wait(
            ChoiceDialog(
                f"{self.run_name} is still training (step {self.step}). Stop it (a checkpoint "
                "is written first), or leave it training without the studio?",
                [("stop", "Stop it"), ("leave", "Leave it training")],
                cancel="Don't quit",
            )
        )
        if answer is None:
            return False
        if answer == "leave":
            run_dir = self.run_dir
            await self.job.leave()
            self.notify(f"{self.run_name} trains on; follow it: gpt-studio --follow {run_dir}")
            return True
        self.state = STOPPING
        await self.job.stop()
        return True

    # -- follow a headless run -------------------------------------------------------------

    def follow(self, run_dir: Path) -> None:
        """Show a run someone else started, from its metrics.jsonl as it grows."""
        self._reset(run_dir.name, run_dir)
        self.follow_tail = RunDir(run_dir).tail()
        self.state = FOLLOWING
        self._log(f"following {run_dir / 'metrics.jsonl'} (read-only: the run is not ours)")
        self._read_followed()
        self.set_interval(FOLLOW_S, self._read_followed)

    def _read_followed(self) -> None:
        if self.follow_tail is not None:
            self._inbox.extend(self.follow_tail.read_new())

    # -- what the engine says --------------------------------------------------------------

    def _receive(self, event: p.Event) -> None:
        self._inbox.append(event)  # applied by the next flush

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self._log(text, error=True)

    def _exited(self, exit: Exit) -> None:
        self._flush()
        self.last_exit = exit
        done = self._last.get("done")
        if exit.code == 0:
            reason = done.reason if isinstance(done, p.Done) else "ended"
            self._log(f"the engine exited cleanly ({reason} at step {self.step})")
        else:
            self._log(f"{exit.describe()}; the last lines it wrote:", error=True)
            for line in exit.stderr:
                self._log(f"  {line}", error=True)
            self.notify(first_error(exit), title="Training failed", severity="error", markup=False)
        if not self.max_steps:  # it never started: stop the bar's waiting pulse
            self.query_one(ProgressBar).update(total=1, progress=0)
        self.job = None
        self.state = IDLE
        self.post_message(self.RunChanged(None, None))

    def _reset(self, name: str, run_dir: Path | None) -> None:
        self.run_name, self.run_dir = name, run_dir
        self.step = self.max_steps = self.events_seen = 0
        self.last_exit = None
        self.samples.clear()
        self._last.clear()
        self._inbox.clear()
        self.query_one(RunCharts).clear()
        self.query_one("#train-samples", Static).update("none yet")
        self.query_one(ProgressBar).update(total=None, progress=0)

    def _flush(self) -> None:
        """Apply the events that arrived since the last flush, in order."""
        if not self._inbox:
            return
        events = self._inbox[:]
        self._inbox.clear()
        charts = self.query_one(RunCharts)
        new_samples = False
        for event in events:
            self.events_seen += 1
            self._last[event.type] = event
            charts.add(event)
            if isinstance(event, p.Start):
                self._started(event)
            elif isinstance(event, p.Step):
                self.step = event.step
            elif isinstance(event, p.Sample):
                if event.id:
                    self.post_message(self.SampleAnswered(event))
                else:
                    self.samples.append(event)
                    new_samples = True
            elif isinstance(event, p.Progress):
                self._preparing(event)
            elif isinstance(event, p.Paused) and self.state == TRAINING:
                self.state = PAUSED
            elif isinstance(event, p.Resumed) and self.state == PAUSED:
                self.state = TRAINING
            line = describe(event)
            if line is not None:
                bad = isinstance(event, p.Error) or (
                    isinstance(event, p.Log) and event.level != "info"
                )
                self._log(line, error=bad)
        if new_samples:
            self._show_samples()
        self._show_status()

    def _started(self, event: p.Start) -> None:
        self.max_steps, self.step = event.max_steps, event.resumed_from
        if self.state == STARTING:
            self.state = TRAINING
        on_gpu = event.device.startswith("cuda")
        self.query_one(RunCharts).set_memory_title("GPU memory GB" if on_gpu else "memory GB (RSS)")

    def _preparing(self, event: p.Progress) -> None:
        """Before the first step the engine prepares its data: show that on the bar."""
        if self.max_steps:
            return
        self.query_one(ProgressBar).update(total=event.total, progress=event.done)
        self.query_one("#train-eta", Label).update(progress_line(event))

    def _show_samples(self) -> None:
        latest = self.samples[-1].step
        shown = [s for s in self.samples if s.step == latest]
        text = "\n\n".join(sample_block(s) for s in shown)
        self.query_one("#train-samples", Static).update(text)

    def _show_status(self) -> None:
        status = self.query_one("#train-status", Static)
        step = self._last.get("step")
        evaluation = self._last.get("eval")
        if self.state == IDLE and self.last_exit is None and not self.events_seen:
            status.update(self._ready_text())  # may wrap; shown while nothing streams in
        else:  # while events stream in: short lines of fixed size, so no relayout each time
            status.update(f"{self.run_name} · {self.state}", layout=False)
        bar = self.query_one(ProgressBar)
        if self.max_steps:
            bar.update(total=self.max_steps, progress=self.step)
        figures = []
        if isinstance(step, p.Step):
            eta = duration(step.eta_s) if self.state in (TRAINING, PAUSED, FOLLOWING) else "-"
            self.query_one("#train-eta", Label).update(
                f"step {self.step}/{self.max_steps} · eta {eta}", layout=False
            )
            figures += [
                f"loss {step.loss:.4f}",
                f"lr {step.lr:.2e}",
                f"{human(step.tokens_per_s)} tok/s",
                f"{step.step_ms:.0f} ms/step",
                f"mem {step.mem_gb:.2f} GB",
            ]
        if isinstance(evaluation, p.Eval):
            figures.append(f"val {evaluation.val_loss:.4f} (step {evaluation.step})")
        self.query_one("#train-figures", Static).update("  ·  ".join(figures), layout=False)

    def _ready_text(self) -> str:
        if self.config is None:
            return "no config yet"
        if self.errors:
            return f"the config has {len(self.errors)} problem(s): fix them in the Config pane"
        c = self.config
        return (
            f"ready: {c.name} · {c.model.n_layer} layers × {c.model.n_embd} wide · "
            f"{c.train.max_steps} steps on {c.data.source} → {c.run_dir}  (press s to start)"
        )

    def _log(self, text: str, *, error: bool = False) -> None:
        self.log_lines.append(text)
        self.query_one("#train-log", RichLog).write(
            Text(text, "bold red" if error else ""), scroll_end=True
        )


def describe(event: p.Event) -> str | None:
    """The log line an event gets; steps are in the charts and status, not the log."""
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
    if isinstance(event, (p.Done, p.Error, p.Log, p.Paused, p.Resumed, p.DataReady)):
        return event_line(event, 0)  # as the engine's console writes it
    if isinstance(event, p.Sample) and event.id:
        return f"step {event.step}: answered sample request {event.id}"
    return None
