"""The events a run reports: one schema for metrics.jsonl, the console and the studio's socket.

Each event is a small dataclass with a `type`; on disk and on the wire it is one JSON object per
line (NDJSON). This module never imports torch: the studio reads these events without loading
the engine.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

MAX_LINE_BYTES = 1 << 20  # a longer line is dropped: no record we write comes close


class ProtocolError(ValueError):
    """A line that is not one of our events; readers log it and carry on."""


@dataclass
class Event:
    type: ClassVar[str] = ""
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, default=_plain)


@dataclass
class Start(Event):
    type: ClassVar[str] = "start"
    run: str
    config: dict[str, Any]
    params: int
    device: str
    dtype: str
    max_steps: int
    tokens_per_step: int
    world_size: int = 1
    resumed_from: int = 0  # the step a resumed run continues after; 0 for a fresh run


@dataclass
class Step(Event):
    type: ClassVar[str] = "step"
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    step_ms: float
    mfu: float | None  # None where the device's peak FLOP/s is unknown (CPU)
    mem_gb: float  # peak GPU memory on CUDA, resident memory on CPU
    tokens: int = 0  # seen so far
    eta_s: float | None = None


@dataclass
class Eval(Event):
    type: ClassVar[str] = "eval"
    step: int
    val_loss: float
    ppl: float


@dataclass
class Sample(Event):
    type: ClassVar[str] = "sample"
    step: int
    prompt: str
    text: str


@dataclass
class Checkpoint(Event):
    type: ClassVar[str] = "checkpoint"
    step: int
    path: str
    best: bool = False
    val_loss: float | None = None


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"
    step: int
    reason: str  # finished | signal | stopped
    elapsed_s: float = 0.0


@dataclass
class Error(Event):
    type: ClassVar[str] = "error"
    message: str
    step: int | None = None


@dataclass
class Log(Event):
    type: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass
class Progress(Event):
    type: ClassVar[str] = "progress"
    task: str  # "prepare", "tokenizer", ...
    done: float
    total: float | None = None
    unit: str = ""  # of done and total: "B" for bytes
    tokens: int | None = None  # produced so far, where the task makes tokens


EVENTS: dict[str, type[Event]] = {
    cls.type: cls for cls in (Start, Step, Eval, Sample, Checkpoint, Done, Error, Log, Progress)
}


def _plain(value: Any) -> Any:
    """JSON for the odd value a record may carry (a Path in a config, a numpy scalar)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def from_dict(record: dict[str, Any]) -> Event:
    """Rebuild an event, refusing unknown types and missing fields; extra fields are ignored so
    an older studio can read a newer engine's records."""
    kind = record.get("type")
    cls = EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown event type {kind!r}; expected one of {', '.join(EVENTS)}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError as err:
        raise ProtocolError(f"bad {kind!r} event: {err}") from None


def encode(event: Event) -> bytes:
    return event.to_json().encode("utf-8") + b"\n"


def decode(line: bytes | str) -> Event:
    """One NDJSON line to an event; anything else raises ProtocolError."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    if not isinstance(record, dict):
        raise ProtocolError("not a JSON object")
    return from_dict(record)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity; a diverged loss is recorded as null."""
    return x if math.isfinite(x) else None
