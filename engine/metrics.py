"""Where a run's events go: metrics.jsonl always, the console, samples.txt, and optional sinks.

Every sink receives the same `engine.contract.events` objects, so the JSONL file, the console and
the studio's socket can never disagree about what happened.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from typing import Any, Protocol

from engine.contract import events as p
from engine.contract.config import Config, to_dict
from engine.contract.errors import UsageError
from engine.contract.render import Rates, duration, event_line, progress_line, sample_text


class Sink(Protocol):
    def write(self, event: p.Event) -> None: ...
    def close(self) -> None: ...


class Reporter:
    """Fans each event out to every sink; a broken optional sink is dropped, not fatal."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def emit(self, event: p.Event) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(event)
            except Exception as err:
                if isinstance(sink, JsonlSink):
                    raise
                self.sinks.remove(sink)
                print(f"warning: {type(sink).__name__} failed and was turned off: {err}",
                      file=sys.stderr)  # fmt: skip

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class JsonlSink:
    """metrics.jsonl: appended to on resume, flushed per record so a follower sees it at once."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def write(self, event: p.Event) -> None:
        self.file.write(event.to_json() + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class SamplesSink:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, event: p.Event) -> None:
        if isinstance(event, p.Sample) and not event.id:  # not a studio's question
            self.file.write(f"--- step {event.step} | {event.prompt!r}\n{sample_text(event)}\n\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


CSV_COLUMNS = ["type", "step", "loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mfu",
               "mem_gb", "val_loss", "ppl", "time"]  # fmt: skip


class CsvSink:
    def __init__(self, path: Path) -> None:
        new = not path.exists()
        self.file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self.writer = csv.DictWriter(self.file, CSV_COLUMNS, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, event: p.Event) -> None:
        if isinstance(event, (p.Step, p.Eval)):
            self.writer.writerow(event.to_dict())
            self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, path: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path))

    def write(self, event: p.Event) -> None:
        if isinstance(event, p.Step):
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mem_gb", "mfu"):
                value = getattr(event, key)
                if value is not None:
                    self.writer.add_scalar(f"train/{key}", value, event.step)
        elif isinstance(event, p.Eval):
            self.writer.add_scalar("val/loss", event.val_loss, event.step)
            self.writer.add_scalar("val/ppl", event.ppl, event.step)
        elif isinstance(event, p.Sample) and not event.id:  # not a studio's question
            self.writer.add_text("sample", sample_text(event), event.step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, cfg: Config) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.log.wandb_project, name=cfg.name, config=to_dict(cfg),
            dir=str(cfg.run_dir), resume="allow",
        )  # fmt: skip

    def write(self, event: p.Event) -> None:
        if isinstance(event, p.Step):
            data = {f"train/{k}": v for k, v in event.to_dict().items()
                    if k in ("loss", "lr", "grad_norm", "tokens_per_s", "mem_gb", "mfu")}  # fmt: skip
            self.run.log(data, step=event.step)
        elif isinstance(event, p.Eval):
            self.run.log({"val/loss": event.val_loss, "val/ppl": event.ppl}, step=event.step)

    def close(self) -> None:
        self.run.finish()


def check_optional_sinks(cfg: Config) -> None:
    """Fail at start, not mid-run, when a sink is enabled but its package is missing."""
    wanted = {"tensorboard": cfg.log.tensorboard, "wandb": cfg.log.wandb}
    for package, enabled in wanted.items():
        if enabled and importlib.util.find_spec(package) is None:
            raise UsageError(
                f"log.{package} = true, but the {package} package is not installed; "
                f"pip install 'gpt-studio[{package}]' or set log.{package} = false"
            )


def open_sinks(cfg: Config, extra: list[Sink] = ()) -> Reporter:
    """The run's files (metrics.jsonl, samples.txt, CSV, TensorBoard, W&B), then `extra`."""
    run_dir = cfg.run_dir
    check_optional_sinks(cfg)
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl"), SamplesSink(run_dir / "samples.txt")]
    if cfg.log.csv:
        sinks.append(CsvSink(run_dir / "metrics.csv"))
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if cfg.log.wandb:
        sinks.append(WandbSink(cfg))
    return Reporter([*sinks, *extra])


def read_events(path: str | Path) -> list[p.Event]:
    """Every event in a metrics.jsonl, skipping a torn last line from a run still writing."""
    with open(path, encoding="utf-8") as f:
        return p.decode_events(f)


class PlainConsole:
    """One line per event for logs, nohup and CI: no colours, no cursor movement. Progress is
    printed at most every `progress_every` seconds, and when a task completes."""

    def __init__(self, stream: Any = None, progress_every: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.max_steps = 0
        self.progress_every = progress_every
        self.rates = Rates()
        self.last_progress: dict[str, float] = {}

    def write(self, event: p.Event) -> None:
        if isinstance(event, p.Start):
            self.max_steps = event.max_steps
        if isinstance(event, p.Progress):
            finished = event.total is not None and event.done >= event.total
            last = self.last_progress.get(event.task)
            if not finished and last is not None and event.time - last < self.progress_every:
                self.rates.describe(event)
                return
            self.last_progress[event.task] = event.time
            line = progress_line(event, self.rates)
        else:
            line = event_line(event, self.max_steps)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichConsole:
    """Live progress bars with rate and ETA under the same lines, for a person at a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),  # the engine's estimate, as the studio shows
            console=self.console, transient=False,
        )  # fmt: skip
        self.tasks: dict[str, Any] = {}
        self.rates = Rates()
        self.max_steps = 0
        self.progress.start()

    def _task(self, name: str, total: float | None, completed: float = 0) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(
                name, total=total, completed=completed, info="", eta="-"
            )
        return self.tasks[name]

    def write(self, event: p.Event) -> None:
        if isinstance(event, p.Start):
            self.max_steps = event.max_steps
            self._task("training", event.max_steps, event.resumed_from)
        elif isinstance(event, p.Step):
            task = self._task("training", self.max_steps or None)
            self.progress.update(task, completed=event.step, info=f"loss {event.loss:.4f}",
                                 eta=duration(event.eta_s))  # fmt: skip
        elif isinstance(event, p.Progress):
            task = self._task(event.task, event.total)
            speed, eta = self.rates.describe(event)
            self.progress.update(task, completed=event.done, total=event.total, info=speed,
                                 eta=duration(eta))  # fmt: skip
            return
        line = event_line(event, self.max_steps)
        if line is not None:
            self.progress.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def console_for() -> Sink:
    """A progress bar at a terminal; plain lines when output goes to a file, a pipe or CI."""
    if sys.stdout.isatty():
        return RichConsole()
    return PlainConsole()
