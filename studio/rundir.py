"""What a run directory holds, read without the engine: its config, its events, its best loss.

A run is `<out_dir>/<name>/` with config.toml, metrics.jsonl and checkpoints/ (best.json beside
the best checkpoint). metrics.jsonl may still be growing, written by a run on this machine or a
headless one, so every reader here tolerates a last line that is only partly written.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine import protocol as p
from engine import runlock
from engine.config import ConfigError, load, to_dict

METRICS = "metrics.jsonl"
HEAD_BYTES = 1 << 20  # enough for the first start event, whose config makes it the longest line
TAIL_BYTES = 1 << 16
LIVE_S = 120.0  # a run whose metrics changed this recently, without a `done`, may be training


class MetricsTail:
    """Follows a metrics.jsonl as it grows: each call returns the events added since the last.

    A last line without its newline is kept back until the rest arrives; a file that shrank
    (replaced by a new run) is read again from the start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.buffer = p.LineBuffer()
        self.dropped = 0  # lines that were not events

    def read_new(self, limit: int = 8 << 20) -> list[p.Event]:
        """Events appended since the last call; at most about `limit` bytes are read per call."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:
            self.offset, self.buffer = 0, p.LineBuffer()
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
            except p.ProtocolError:
                self.dropped += 1
        return events


@dataclass
class RunInfo:
    """One row of the Runs pane."""

    path: Path
    name: str
    shape: str  # what was trained: "4L·128d·ctx128 char"
    step: int  # the last step it reported
    max_steps: int
    best_val: float | None
    started: float | None  # epoch seconds of its first start event
    state: str  # training | finished | stopped | failed | training? | interrupted | new
    checkpoints: bool
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
        folders = [d for d in root.iterdir() if d.is_dir() and _is_run(d)]
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


def _is_run(folder: Path) -> bool:
    return any((folder / n).exists() for n in (METRICS, "checkpoints", "config.toml"))


def read_run(folder: Path) -> RunInfo:
    """A run's summary from the head and tail of its metrics and its best.json."""
    head = _events(folder / METRICS, 0, HEAD_BYTES)
    tail = _events(folder / METRICS, -TAIL_BYTES, TAIL_BYTES)
    start = next((e for e in head if isinstance(e, p.Start)), None)
    last_start = next((e for e in reversed(tail) if isinstance(e, p.Start)), start)
    shape = _shape(folder, start)
    step = max((e.step for e in tail if isinstance(e, (p.Step, p.Done, p.Checkpoint))), default=0)
    evals = [e.val_loss for e in tail if isinstance(e, p.Eval)]
    best = _best_json(folder)
    if best is None and evals:
        best = min(evals)
    writer = runlock.holder(folder)
    return RunInfo(
        path=folder,
        name=folder.name,
        shape=shape,
        step=step,
        max_steps=last_start.max_steps if last_start else 0,
        best_val=best,
        started=start.time if start else None,
        state="training" if writer is not None else _state(folder, tail),
        checkpoints=any((folder / "checkpoints").glob("*.pt")),
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


def _shape(folder: Path, start: p.Start | None) -> str:
    raw = start.config if start else None
    if raw is None:
        try:
            raw = to_dict(load(folder / "config.toml"))
        except (ConfigError, OSError):
            return "-"
    m, tok = raw.get("model", {}), raw.get("tokenizer", {})
    kind = tok.get("kind", "?")
    if kind == "tiktoken":
        kind = tok.get("name", kind)
    elif kind == "bpe":
        kind = f"bpe {tok.get('vocab_size', '?')}"
    return f"{m.get('n_layer', '?')}L·{m.get('n_embd', '?')}d·ctx{m.get('block_size', '?')} {kind}"


def _best_json(folder: Path) -> float | None:
    try:
        loss = float(json.loads((folder / "checkpoints" / "best.json").read_text())["val_loss"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return loss if math.isfinite(loss) else None


def _state(folder: Path, tail: list[p.Event]) -> str:
    last = next((e for e in reversed(tail) if not isinstance(e, (p.Log, p.Progress))), None)
    if last is None:
        return "new"
    if isinstance(last, p.Done):
        return "finished" if last.reason == "finished" else "stopped"
    if isinstance(last, p.Error):
        return "failed"
    recent = time.time() - _mtime(folder / METRICS) < LIVE_S
    return "training?" if recent else "interrupted"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
