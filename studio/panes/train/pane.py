"""The Train pane: start the Config pane's config, watch it learn, pause, stop, save.

The run is a subprocess (`python -m engine.train`) reporting to a private socket: a TrainJob
(studio.jobs) run by this pane's worker, posting what it hears here as messages. This pane sends
the run commands and moves through the states of `state.py`; the controls row shows them, and
a RunView shows the run.

The same pane follows a run it did not start (`gpt-studio --follow RUN_DIR`): events then come
from the run's metrics.jsonl as it grows, and there is nothing to command.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Static

from engine.contract import events as p
from engine.contract.config import Config
from studio.command import headless_command
from studio.jobs import AttachJob, Exit, MetricsFollower, TrainJob, first_error
from studio.messages import (
    ConfigState,
    Detached,
    EngineConnected,
    EngineExited,
    EngineNote,
    FixConfig,
    RunChanged,
    RunEvents,
    SampleAnswered,
    ValuesChosen,
)
from studio.panes.train import starting, status
from studio.panes.train.controls import RunControls
from studio.panes.train.state import COMMANDING, LIVE, RunState, after, allows
from studio.widgets.dialogs import ChoiceDialog, CommandDialog, PathDialog
from studio.widgets.runview import RunView

FOLLOW_S = 0.5
SAMPLE_NOW = "train-ask-"  # the id prefix of samples asked for here, shown with the others


class TrainPane(Vertical):
    """One training run at a time: its controls and state above the run view."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start", tooltip="Train the Config pane's config"),
        Binding("p", "pause", "Pause", tooltip="Hold the run between two steps"),
        Binding("p", "resume", "Resume", tooltip="Continue the paused run"),
        Binding("x", "stop", "Stop", tooltip="Write a checkpoint, then end the run"),
        Binding("c", "save", "Save now", tooltip="Write a checkpoint now and go on"),
        Binding("n", "sample_now", "Sample now", tooltip="Ask the run for a sample of a prompt"),
        Binding("f6", "show_command", "Show command", tooltip="The headless command for this"),
        Binding("l", "log_scale", "Log y", tooltip="Charts: log-scale y axis, or linear again"),
        Binding("e", "smooth", "Smooth", tooltip="Charts: EMA-smoothed curves over the raw ones"),
    ]

    state: reactive[RunState] = reactive(RunState.IDLE)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.can_focus = True
        self.config_state: ConfigState | None = None  # the Config pane's, as the App holds it
        self.job: TrainJob | AttachJob | None = None  # the run we command: ours, or attached
        self.left: Path | None = None  # the run folder of a run left training at quit
        # argv for the engine's arguments; None: python -m engine.train (a benchmark or a test
        # puts a stand-in engine here)
        self.engine_command: Callable[[list[str]], list[str]] | None = None
        self.follower: MetricsFollower | None = None
        self.last_exit: Exit | None = None
        self.notes: list[str] = []  # what went wrong on the wire, as logged
        self._asked = 0  # samples asked for with `n`
        self._last_prompt = ""

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield RunControls(id="train-controls")
        yield RunView(id="train-view")

    @property
    def controls(self) -> RunControls:
        return self.query_one(RunControls)

    @property
    def view(self) -> RunView:
        return self.query_one(RunView)

    @property
    def status(self) -> Static:
        return self.controls.status

    @property
    def processes(self) -> int:
        """How many processes the next run gets."""
        return self.controls.processes

    # what the run view knows, for the App, tests and benchmarks
    @property
    def step(self) -> int:
        return self.view.step

    @property
    def run_name(self) -> str:
        return self.view.run_name

    @property
    def run_dir(self) -> Path | None:
        return self.view.run_dir

    def on_mount(self) -> None:
        self.watch(self.app, "config", self._config_changed)
        self._show_status()

    def _config_changed(self, state: ConfigState | None) -> None:
        self.config_state = state
        if self.state is RunState.IDLE:
            self._show_status()

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allows(self.state, action)

    def watch_state(self, state: RunState) -> None:
        self.refresh_bindings()
        self.view.live = state in LIVE
        self.controls.show(state)
        self._show_status()

    def on_run_controls_pressed(self, message: RunControls.Pressed) -> None:
        message.stop()
        self.run_action(message.action)

    @work(exclusive=True, group="train-start")
    async def action_start(self) -> None:
        """Train the Config pane's config; a fault in the form blocks it, naming the field."""
        if self.state is not RunState.IDLE:
            return
        state = self.config_state
        if state is None or state.errors:
            self._refuse_invalid()
            return
        config = copy.deepcopy(state.config)  # the App's is shared
        chosen = await starting.continue_or_new(self.app, config)
        if chosen is None:
            return
        name, resume = chosen
        if name != config.name:
            config.name = name
            self.post_message(ValuesChosen({"name": name}))
        if not await starting.fits(self.app, config):
            return
        self.start_run(config, resume=resume)

    def start_run(self, config: Config, *, resume: bool = False) -> None:
        """Start `config` as a training subprocess (continuing its run when `resume`)."""
        self.workers.cancel_group(self, "train-follow")  # a run followed before is put away
        self.follower = None
        self.view.reset(config.name, config.run_dir, waiting=True)
        self.last_exit = None
        self.state = RunState.STARTING
        verb = "continuing" if resume else "starting"
        self.view.write(f"{verb} {config.name}: python -m engine.train ... in {Path.cwd()}")
        processes = self.processes
        self.job = TrainJob(self, command=self.engine_command, processes=processes)
        if processes > 1:
            self.view.write(
                f"{processes} processes under torchrun ({config.train.parallel}); one run"
            )
        self._run_job(self.job, config, resume)
        self.post_message(RunChanged(config.name, config.run_dir))

    @work(group="train-job", exclusive=True, exit_on_error=False)
    async def _run_job(self, job: TrainJob, config: Config, resume: bool) -> None:
        try:
            await job.run(config, resume=resume)
        except OSError as err:
            self.view.write(f"could not start the engine: {err}", error=True)
            self._ended()

    @work(exclusive=True, group="train-sample")
    async def action_sample_now(self) -> None:
        """Ask for a prompt; the run answers between two steps, in the samples box."""
        prompt = await self.app.push_screen_wait(
            PathDialog(
                "Sample the live weights now, continuing this prompt:",
                self._last_prompt,
                action="Sample",
                placeholder="a prompt, e.g. The ",
            )
        )
        if not prompt:
            return
        self._last_prompt = prompt
        self._asked += 1
        request_id = f"{SAMPLE_NOW}{self._asked}"
        tokens = self.config_state.config.train.sample_tokens if self.config_state else 200
        if self._send(p.SampleRequest(prompt=prompt, max_tokens=tokens, id=request_id)):
            self.view.write(f"asked for a sample of {prompt!r}")

    def action_show_command(self) -> None:
        """The headless command line for the Config pane's config, to run it on a server."""
        state = self.config_state
        if state is None or state.errors:
            self._refuse_invalid()
            return
        self.app.push_screen(
            CommandDialog(
                "Train this config headless (from this folder, or a clone on a server):",
                headless_command(state.config, state.source),
            )
        )

    def action_log_scale(self) -> None:
        self.view.charts.toggle_log()

    def action_smooth(self) -> None:
        self.view.charts.toggle_smooth()

    def action_pause(self) -> None:
        if self._send(p.Pause()):
            self.view.write("asked the engine to pause after this step")

    def action_resume(self) -> None:
        if self._send(p.Resume()):
            self.view.write("asked the engine to resume")

    def action_stop(self) -> None:
        if self._send(p.Stop()):
            self.state = RunState.STOPPING
            self.view.write("asked the engine to write a checkpoint and stop")

    def action_save(self) -> None:
        if self._send(p.Save()):
            self.view.write("asked the engine for a checkpoint now")

    def ask_sample(self, request: p.SampleRequest) -> bool:
        """Ask the live run for a sample; its answer comes back as SampleAnswered."""
        return self.state in COMMANDING and self._send(request)

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
        errors = self.config_state.errors if self.config_state else {}
        if not errors:
            self.notify("No valid config yet: fill in the Config pane first.", severity="error")
            return
        message = status.refusal(errors)
        self.status.update(f"cannot start: {message}")
        self.notify(message, title="Cannot start: fix this first", severity="error", markup=False)
        self.post_message(FixConfig(next(iter(errors))))

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
            self.left = self.run_dir
            await self.job.leave()
            return True
        self.state = RunState.STOPPING
        await self.job.stop()
        return True

    # -- attach to a run training elsewhere ------------------------------------------------

    def attach(self, where: str | Path) -> bool:
        """Watch and command a run started elsewhere: its folder (RUN_DIR/control.json says
        where it listens) or its control address (unix:PATH, tcp:HOST:PORT, e.g. forwarded
        over ssh). False, with the reason shown, when there is nothing to attach to."""
        if self.state is not RunState.IDLE:
            self.notify("A run is already going in the Train pane.", severity="error")
            return False
        target = starting.attach_target(where)
        if isinstance(target, str):
            self.notify(target, title="Nothing to attach to", severity="error", markup=False)
            return False
        address, token, name, run_dir = target
        self.workers.cancel_group(self, "train-follow")
        self.follower = None
        self.view.reset(name, run_dir, waiting=True)
        self.last_exit = None
        self.state = RunState.STARTING
        self.view.write(f"attaching to {name} at {address}")
        self.job = AttachJob(self, address, token)
        self._run_attached(self.job)
        self.post_message(RunChanged(name, run_dir))
        return True

    @work(group="train-job", exclusive=True, exit_on_error=False)
    async def _run_attached(self, job: AttachJob) -> None:
        try:
            await job.run()
        except OSError as err:
            self.view.write(f"could not attach: {err}", error=True)
            self.notify(f"could not attach: {err}", severity="error", markup=False)
            self._ended()

    def on_detached(self, message: Detached) -> None:
        message.stop()
        self.view.flush()
        where = self.run_dir or (self.job.address if isinstance(self.job, AttachJob) else "")
        text, error = status.detached_line(message.finished, self.view.last(p.Done), where)
        self.view.write(text, error=error)
        self._ended()

    def _ended(self) -> None:
        self.view.ended()
        self.job = None
        self.state = RunState.IDLE
        self.post_message(RunChanged(None, None))

    # -- follow a headless run -------------------------------------------------------------

    def follow(self, run_dir: Path) -> None:
        """Show a run someone else started, from its metrics.jsonl as it grows."""
        self.view.reset(run_dir.name, run_dir)
        self.state = RunState.FOLLOWING
        self.view.write(f"following {run_dir / 'metrics.jsonl'} (read-only: the run is not ours)")
        self.follower = MetricsFollower(self, run_dir, FOLLOW_S)
        self._follow(self.follower)

    @work(group="train-follow", exclusive=True, exit_on_error=False)
    async def _follow(self, follower: MetricsFollower) -> None:
        await follower.run()

    # -- what the engine says --------------------------------------------------------------

    def on_run_events(self, message: RunEvents) -> None:
        message.stop()
        self.view.add(message.events)
        for event in message.events:
            if isinstance(event, p.Start) and event.chat_tuned:
                # the Chat pane talks to it through the template
                self.post_message(RunChanged(self.run_name, self.run_dir, chat_tuned=True))
            elif isinstance(event, p.Sample) and event.id.startswith(SAMPLE_NOW):
                self.view.show_sample(event)
            elif isinstance(event, p.Sample) and event.id:
                self.post_message(SampleAnswered(event))
            self.state = after(self.state, event)
        if self.state is not RunState.IDLE:
            self._show_status()

    def on_engine_connected(self, message: EngineConnected) -> None:
        message.stop()

    def on_engine_note(self, message: EngineNote) -> None:
        message.stop()
        self.notes.append(message.text)
        self.view.write(message.text, error=True)

    def on_engine_exited(self, message: EngineExited) -> None:
        message.stop()
        exit = message.exit
        self.view.flush()
        self.last_exit = exit
        for text, error in status.exit_lines(exit, self.view.last(p.Done), self.step):
            self.view.write(text, error=error)
        if exit.code != 0:
            self.notify(first_error(exit), title="Training failed", severity="error", markup=False)
        self._ended()

    def _show_status(self) -> None:
        if self.state is RunState.IDLE and self.last_exit is None and not self.view.events_seen:
            self.status.update(status.ready_text(self.config_state))  # may wrap
        else:
            done = self.view.last(p.Done)
            self.status.update(status.run_text(self.run_name, self.state, done), layout=False)
