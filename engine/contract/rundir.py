"""A run folder and everything known about its layout, in one place.

    RUN_DIR/
      config.toml        the resolved config the run started with
      metrics.jsonl      every event (engine.contract.events), one per line
      samples.txt        the live samples as text
      checkpoints/       step_00000100.pt ..., best.pt and best.json {"step", "val_loss"}
      control.json       while it trains: where its control endpoint listens (ControlRecord)

Both sides read runs through `RunDir`: the engine to refuse starting over a run and to keep best,
the studio to list, summarise and follow runs. A folder "holds a run" when it has metrics or
checkpoints, which is exactly what starting over it would lose.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.contract import events as p
from engine.contract import runlock
from engine.contract.config import ConfigError, load, to_dict
from engine.contract.framing import LineBuffer, ProtocolError, finite_or_none, parse_address
from engine.files import atomic_write_text

HEAD_BYTES = 1 << 20  # enough for the first start event, whose config makes it the longest line
TAIL_BYTES = 1 << 16
LIVE_S = 120.0  # a run whose metrics changed this recently, without a `done`, may be training
STEP_FILE = re.compile(r"step_(\d{8})\.pt")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.txt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def control(self) -> Path:
        return self.path / "control.json"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def best_json(self) -> Path:
        return self.checkpoints / "best.json"

    def held(self) -> list[str]:
        """What in this folder makes it a run (and would be lost by starting over it)."""
        return [p.name for p in (self.metrics, self.checkpoints) if p.exists()]

    def is_run(self) -> bool:
        return bool(self.held())

    @property
    def lock(self) -> Path:
        """Held by the one process writing this run (engine.contract.runlock)."""
        return self.path / runlock.LOCK_NAME

    def writer(self) -> int | None:
        """The pid of the live process training this run now, or None."""
        return runlock.holder(self.path)

    def step_files(self) -> list[Path]:
        """The step checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(f for f in self.checkpoints.iterdir() if STEP_FILE.fullmatch(f.name))

    def has_checkpoints(self) -> bool:
        return bool(self.step_files()) or self.best.is_file()

    def read_best(self) -> dict[str, Any] | None:
        """best.json as {"step": int | None, "val_loss": float}, or None if absent or unreadable."""
        try:
            record = json.loads(self.best_json.read_text(encoding="utf-8"))
            loss = float(record["val_loss"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
        return {"step": record.get("step"), "val_loss": loss} if math.isfinite(loss) else None

    def best_val_loss(self) -> float | None:
        best = self.read_best()
        return best["val_loss"] if best else None

    def write_best(self, step: int, val_loss: float) -> None:
        atomic_write_text(self.best_json, json.dumps({"step": step, "val_loss": val_loss}))

    def tail(self) -> MetricsTail:
        """A follower of this run's metrics from their start."""
        return MetricsTail(self.metrics)

    def control_record(self) -> ControlRecord | None:
        """Where the run listens for studios, while it trains (None: it does not)."""
        return ControlRecord.load(self.control)

    def attachable(self) -> bool:
        """Whether a studio can attach to it now: it trains, with a live control endpoint."""
        record = self.control_record()
        return record is not None and record.alive()


@dataclass
class ControlRecord:
    """RUN_DIR/control.json: where a training run's control endpoint listens and what proves a
    client is its owner's (engine.remote.ControlServer writes it, the studio reads it)."""

    address: str  # unix:/path/to/control.sock or tcp:127.0.0.1:PORT
    token: str  # the hello must carry it (empty: a Unix socket, guarded by its 0700 folder)
    pid: int
    host: str

    def save(self, path: Path) -> None:
        """Written 0600: on TCP the token is the only lock."""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(
                {"address": self.address, "token": self.token, "pid": self.pid, "host": self.host},
                f,
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ControlRecord | None:
        """The record, or None when there is none (or an unreadable one)."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(str(raw["address"]), str(raw["token"]), int(raw["pid"]), str(raw["host"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """Whether the process that wrote it still runs (only knowable on its own host)."""
        if self.host != socket.gethostname():
            return True  # a folder synced from a server: only trying to connect can tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        kind, where = parse_address(self.address)
        return kind != "unix" or Path(str(where)).exists()


class MetricsTail:
    """Follows a metrics.jsonl as it grows: each call returns the events added since the last.

    A last line without its newline is kept back until the rest arrives; a file that shrank
    (replaced by a new run) is read again from the start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.buffer = LineBuffer()
        self.dropped = 0  # lines that were not events

    def read_new(self, limit: int = 8 << 20) -> list[p.Event]:
        """Events appended since the last call; at most about `limit` bytes are read per call."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:
            self.offset, self.buffer = 0, LineBuffer()
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(limit)
        self.offset += len(data)
        events = []
        for line in self.buffer.feed(data):
            try:
                events.append(p.decode(line))
            except ProtocolError:
                self.dropped += 1
        return events


@dataclass
class RunInfo:
    """A run's summary: one row of the Runs pane."""

    path: Path
    name: str
    shape: str  # what was trained: "4L·128d·ctx128 char"
    step: int  # the last step it reported
    max_steps: int
    best_val: float | None
    started: float | None  # epoch seconds of its first start event
    state: str  # training | finished | stopped | failed | training? | interrupted | new
    checkpoints: bool
    attachable: bool = False  # it trains now, with a control endpoint a studio can attach to
    writer: int | None = None  # the live process holding the run's lock: it is training now

    @property
    def date(self) -> str:
        when = self.started or _mtime(self.path)
        return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M") if when else "-"


def list_runs(out_dir: str | Path) -> list[RunInfo]:
    """Every run directly under `out_dir`, newest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    runs = []
    try:
        folders = [d for d in root.iterdir() if d.is_dir() and RunDir(d).is_run()]
    except OSError:
        return []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except Exception:  # one unreadable folder must not hide the others or stop the studio
            runs.append(_unreadable(folder))
    return sorted(runs, key=lambda r: r.started or _mtime(r.path), reverse=True)


def _unreadable(folder: Path) -> RunInfo:
    return RunInfo(folder, folder.name, "-", 0, 0, None, None, "unreadable", False)


def read_run(folder: str | Path) -> RunInfo:
    """A run's summary from the head and tail of its metrics and its best.json."""
    run = RunDir(folder)
    head = _events(run.metrics, 0, HEAD_BYTES)
    tail = _events(run.metrics, -TAIL_BYTES, TAIL_BYTES)
    start = next((e for e in head if isinstance(e, p.Start)), None)
    last_start = next((e for e in reversed(tail) if isinstance(e, p.Start)), start)
    step = max((e.step for e in tail if isinstance(e, (p.Step, p.Done, p.Checkpoint))), default=0)
    evals = [e.val_loss for e in tail if isinstance(e, p.Eval)]
    best = run.best_val_loss()
    if best is None and evals:
        best = min(evals)
    attachable, writer = run.attachable(), run.writer()
    return RunInfo(
        path=run.path,
        name=run.name,
        shape=_shape(run, start),
        step=step,
        max_steps=last_start.max_steps if last_start else 0,
        best_val=best,
        started=start.time if start else None,
        state="training" if attachable or writer is not None else _state(run, tail),
        checkpoints=run.has_checkpoints(),
        attachable=attachable,
        writer=writer,
    )


def _events(path: Path, offset: int, size: int) -> list[p.Event]:
    """The whole events found in `size` bytes at `offset` (negative: from the end)."""
    try:
        with open(path, "rb") as f:
            if offset < 0:
                f.seek(max(0, os.fstat(f.fileno()).st_size + offset))
                partial_first = f.tell() > 0
            else:
                partial_first = False
            data = f.read(size)
    except OSError:
        return []
    lines = data.split(b"\n")
    if partial_first:
        lines = lines[1:]  # the cut went through it
    return p.decode_events(lines)


def _shape(run: RunDir, start: p.Start | None) -> str:
    raw = start.config if start else None
    if raw is None:
        try:
            raw = to_dict(load(run.config))
        except (ConfigError, OSError):
            return "-"
    m, tok = raw.get("model", {}), raw.get("tokenizer", {})
    kind = tok.get("kind", "?")
    if kind == "tiktoken":
        kind = tok.get("name", kind)
    elif kind == "bpe":
        kind = f"bpe {tok.get('vocab_size', '?')}"
    return f"{m.get('n_layer', '?')}L·{m.get('n_embd', '?')}d·ctx{m.get('block_size', '?')} {kind}"


def _state(run: RunDir, tail: list[p.Event]) -> str:
    last = next((e for e in reversed(tail) if not isinstance(e, (p.Log, p.Progress))), None)
    if last is None:
        return "new"
    if isinstance(last, p.Done):
        return "finished" if last.reason == "finished" else "stopped"
    if isinstance(last, p.Error):
        return "failed"
    recent = time.time() - _mtime(run.metrics) < LIVE_S
    return "training?" if recent else "interrupted"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@dataclass
class RunCurves:
    """What a comparison of runs needs of one: its loss curves and its config."""

    path: Path
    name: str
    train: list[tuple[int, float]]  # (step, loss)
    val: list[tuple[int, float]]
    tokens_per_step: int
    config: dict[str, Any]


def read_curves(folder: str | Path) -> RunCurves:
    """A run's whole loss history from its metrics.jsonl (a resumed run's later steps win)."""
    run = RunDir(folder)
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    start: p.Start | None = None
    tail = run.tail()
    while events := tail.read_new():
        for event in events:
            if isinstance(event, p.Start):
                start = event
            elif isinstance(event, p.Step) and finite_or_none(event.loss) is not None:
                train[event.step] = event.loss
            elif isinstance(event, p.Eval) and finite_or_none(event.val_loss) is not None:
                val[event.step] = event.val_loss
    config = start.config if start is not None else {}
    if not config:
        try:
            config = to_dict(load(run.config))
        except (ConfigError, OSError):
            config = {}
    return RunCurves(
        path=run.path,
        name=run.name,
        train=sorted(train.items()),
        val=sorted(val.items()),
        tokens_per_step=start.tokens_per_step if start is not None else 0,
        config=config,
    )
