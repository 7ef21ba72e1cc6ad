"""The events a run reports and the commands the studio sends: one schema for metrics.jsonl,
the console and the studio's socket.

Each message is a small dataclass with a `type`; on disk and on the wire it is one JSON object per
line (NDJSON). Engine -> studio: a `hello` first (with the studio's token), then exactly the
records of metrics.jsonl plus `log` and `progress`. Studio -> engine: `pause`, `resume`, `stop`,
`save` and `sample`. A line that is too long, not JSON, or not one of these messages with fields
of the right types raises ProtocolError; readers drop it, log it and carry on.

This module never imports torch: the studio reads these messages without loading the engine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

MAX_LINE_BYTES = 1 << 20  # a longer line is dropped: no record we write comes close


TOKEN_ENV = "GPT_STUDIO_TOKEN"  # a TCP engine proves it was started by this studio

# Limits of the sampling values every caller may ask for (CLI, --serve, the studio's sample
# command): beyond them a request is refused with a message, never attempted.
MAX_NEW_TOKENS = 1_000_000  # the token buffer of one row is 8 bytes per token
MAX_PROMPT_CHARS = 1_000_000
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class ProtocolError(ValueError):
    """A line that is not one of our messages; readers log it and carry on."""


@dataclass
class Message:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, default=_plain)


@dataclass
class Event(Message):
    time: float = field(default_factory=time.time, kw_only=True)


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
    skipped: int = 0  # updates the health guards skipped since the last step record


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
    id: str = ""  # the studio's request id when it asked for this sample; "" for live samples


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


@dataclass
class Hello(Message):
    """The engine's first line on the socket: who it is, and the token the studio gave it."""

    type: ClassVar[str] = "hello"
    token: str = ""
    pid: int = 0


@dataclass
class Command(Message):
    """Studio -> engine."""


@dataclass
class Pause(Command):
    type: ClassVar[str] = "pause"


@dataclass
class Resume(Command):
    type: ClassVar[str] = "resume"


@dataclass
class Stop(Command):
    """Write a checkpoint, then end the run."""

    type: ClassVar[str] = "stop"


@dataclass
class Save(Command):
    type: ClassVar[str] = "save"


@dataclass
class SampleRequest(Command):
    """Answered by a `sample` event with the same id, generated from the live weights."""

    type: ClassVar[str] = "sample"
    prompt: str
    max_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 200
    top_p: float = 1.0
    id: str = ""


def sampling_faults(
    max_tokens: Any = None,
    temperature: Any = None,
    top_k: Any = None,
    top_p: Any = None,
    seed: Any = None,
    prompt: Any = None,
) -> list[str]:
    """What is wrong with these sampling values (None: not given), one phrase each."""
    faults = []
    if max_tokens is not None and not 1 <= max_tokens <= MAX_NEW_TOKENS:
        faults.append(f"max_tokens must be 1 to {MAX_NEW_TOKENS:,}, got {max_tokens!r}")
    if temperature is not None and not 0 <= temperature <= 1e6:
        faults.append(f"temperature must be 0 (greedy) to 1e6, got {temperature!r}")
    if top_k is not None and not 0 <= top_k <= MAX_INT:
        faults.append(f"top_k must be 0 (off) or more, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        faults.append(f"top_p must be above 0 and at most 1, got {top_p!r}")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        faults.append(f"seed must be within {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {seed!r}")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        faults.append(f"prompt of {len(prompt):,} characters is over {MAX_PROMPT_CHARS:,}")
    return faults


COMMANDS: dict[str, type[Command]] = {
    cls.type: cls for cls in (Pause, Resume, Stop, Save, SampleRequest)
}


def _plain(value: Any) -> Any:
    """JSON for the odd value a record may carry (a Path in a config, a numpy scalar)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
    "list": (list,),
}  # fmt: skip


def _fits(value: Any, annotation: str) -> bool:
    """Whether a decoded JSON value fits a field annotation such as 'float | None'."""
    for option in annotation.split("|"):
        name = option.strip().split("[")[0]
        if name == "None" and value is None:
            return True
        allowed = _TYPES.get(name)
        if allowed is None:
            return True  # Any and friends
        if isinstance(value, allowed) and (name == "bool" or not isinstance(value, bool)):
            return True
    return False


def from_dict(record: dict[str, Any], kinds: dict[str, type[Message]] | None = None) -> Any:
    """Rebuild a message, refusing unknown types, missing fields and values of the wrong type;
    extra fields are ignored so an older studio can read a newer engine's records."""
    kinds = EVENTS if kinds is None else kinds
    kind = record.get("type")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {', '.join(kinds)}")
    values = {}
    for f in fields(cls):
        if f.name in record:
            if not _fits(record[f.name], str(f.type)):
                raise ProtocolError(f"bad {kind!r} message: {f.name} = {record[f.name]!r}")
            values[f.name] = record[f.name]
    try:
        message = cls(**values)
    except TypeError as err:
        raise ProtocolError(f"bad {kind!r} message: {err}") from None
    if isinstance(message, SampleRequest):
        faults = sampling_faults(
            message.max_tokens, message.temperature, message.top_k, message.top_p,
            prompt=message.prompt,
        )  # fmt: skip
        if faults:
            raise ProtocolError(f"bad 'sample' message: {'; '.join(faults)}")
    return message


def encode(message: Message) -> bytes:
    return message.to_json().encode("utf-8") + b"\n"


MAX_DEPTH = 16  # of nested objects and lists: a config is 3 deep, nothing we write is deeper
MAX_INT = 2**63 - 1  # every whole number we exchange (steps, seeds, counts) fits in int64


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not a number JSON allows; a record holds finite numbers")


def loads(line: bytes | str) -> dict[str, Any]:
    """One NDJSON line to a plain JSON object whose values any reader can use safely.

    Refused, as ProtocolError and never anything else: a line over the size limit, not JSON,
    NaN or Infinity (JSON has neither; our writers never write them), a number too large for
    a float or an int64, nesting deeper than MAX_DEPTH, and text with a lone surrogate (which
    would fail later, when the reader writes it out). This is the single decoding step of
    every reader of our lines: the engine's command reader, the studio's event reader, the
    run-folder scanner and `--serve`.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        record = json.loads(line, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if "integer string conversion" in str(err):
            raise ProtocolError("a whole number outside the 64-bit range") from None
        raise ProtocolError(f"not JSON: {_first_line(err)}") from None
    if not isinstance(record, dict):
        raise ProtocolError("not a JSON object")
    _check_values(record, 0)
    return record


def _first_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def _check_values(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ProtocolError("a whole number outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("a number too large for a float")
    elif isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("text with a lone surrogate, which is not valid Unicode") from None


def decode(line: bytes | str, kinds: dict[str, type[Message]] | None = None) -> Any:
    """One NDJSON line to a message of `kinds` (default: events); else ProtocolError."""
    return from_dict(loads(line), kinds)


def decode_events(lines: Iterable[bytes | str]) -> list[Event]:
    """Every event in `lines`, skipping any that is not one: a torn last line of a run still
    writing, a blank line, a record from a newer engine's unknown kind."""
    events = []
    for line in lines:
        try:
            events.append(decode(line))
        except ProtocolError:
            continue
    return events


def decode_command(line: bytes | str) -> Command:
    return decode(line, COMMANDS)


def decode_hello(line: bytes | str) -> Hello:
    return decode(line, {"hello": Hello})


class LineBuffer:
    """Cuts a byte stream into lines. A line longer than the limit is dropped whole (counted),
    so one runaway message costs that message, never the connection."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.skipping = False  # inside an over-long line, waiting for its end
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        lines = []
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if self.skipping:
                self.skipping = False
            elif len(line) > self.limit:
                self.dropped += 1
            else:
                lines.append(line)
        if len(self.buffer) > self.limit and not self.skipping:
            self.buffer.clear()
            self.skipping = True
            self.dropped += 1
        elif self.skipping:
            self.buffer.clear()
        return lines


def parse_address(address: str) -> tuple[str, Any]:
    """'unix:/path/to.sock' -> ('unix', path); 'tcp:HOST:PORT' -> ('tcp', (host, port))."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return "tcp", (host, int(port))
    raise ProtocolError(f"address {address!r} must be unix:/path/to/socket or tcp:127.0.0.1:PORT")


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity; a diverged loss is recorded as null."""
    return x if math.isfinite(x) else None
