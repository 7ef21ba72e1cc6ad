"""A run folder and everything known about its layout, in one place.

    RUN_DIR/
      config.toml        the resolved config the run started with
      metrics.jsonl      every event (engine.contract.events), one per line
      samples.txt        the live samples as text
      checkpoints/       step_00000100.pt ..., best.pt and best.json {"step", "val_loss"}

Both sides read runs through `RunDir`: the engine to refuse starting over a run and to keep best,
the studio to list, summarise and follow runs. A folder "holds a run" when it has metrics or
checkpoints, which is exactly what starting over it would lose.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.contract import events as p
from engine.contract.config import ConfigError, load, to_dict
from engine.contract.framing import LineBuffer, ProtocolError
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
            return {"step": record.get("step"), "val_loss": float(record["val_loss"])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def best_val_loss(self) -> float | None:
        best = self.read_best()
        return best["val_loss"] if best else None

    def write_best(self, step: int, val_loss: float) -> None:
        atomic_write_text(self.best_json, json.dumps({"step": step, "val_loss": val_loss}))

    def tail(self) -> MetricsTail:
        """A follower of this run's metrics from their start."""
        return MetricsTail(self.metrics)


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
    state: str  # finished | stopped | failed | training? | interrupted | new
    checkpoints: bool

    @property
    def date(self) -> str:
        when = self.started or _mtime(self.path)
        return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M") if when else "-"


def list_runs(out_dir: str | Path) -> list[RunInfo]:
    """Every run directly under `out_dir`, newest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    runs = [read_run(d) for d in root.iterdir() if d.is_dir() and RunDir(d).is_run()]
    return sorted(runs, key=lambda r: r.started or _mtime(r.path), reverse=True)


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
    return RunInfo(
        path=run.path,
        name=run.name,
        shape=_shape(run, start),
        step=step,
        max_steps=last_start.max_steps if last_start else 0,
        best_val=best,
        started=start.time if start else None,
        state=_state(run, tail),
        checkpoints=run.has_checkpoints(),
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
