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

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from engine.contract.framing import ProtocolError, dumps_line, loads_line
from engine.contract.sampling import MAX_PROMPT_CHARS, Sampling
from engine.contract.sampling import faults as sampling_faults


@dataclass
class Message:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return dumps_line(self.to_dict(), default=_plain)


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
    chat_tuned: bool = False  # its tokenizer has the chat template: samples answer as turns
    matmul_precision: str = "highest"  # torch's float32 matmul precision: medium is bf16 inputs


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
    error: str = ""  # why the studio's request got no text (a prompt the tokenizer cannot encode)


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
    """A run ended by a fault. A config fault also names the field (the ConfigError's fields),
    so the studio marks it without reading the message."""

    type: ClassVar[str] = "error"
    message: str
    step: int | None = None
    origin: str | None = None
    key: str | None = None
    value: Any = None
    allowed: str | None = None


@dataclass
class Log(Event):
    type: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass
class Paused(Event):
    """The run holds after `step` (its records are out) until a resume or stop."""

    type: ClassVar[str] = "paused"
    step: int


@dataclass
class Resumed(Event):
    type: ClassVar[str] = "resumed"
    step: int


@dataclass
class Adjusted(Event):
    """A setting the run uses at another value than its config holds (config.adjustments):
    said right after `start`, so a console, a log and the studio all show the note."""

    type: ClassVar[str] = "adjusted"
    key: str  # dotted, e.g. "train.warmup_steps"
    value: int  # as configured
    used: int
    reason: str


@dataclass
class DataReady(Event):
    """`prepare` finished (or found its cached result): the shards a run reads are in `out_dir`."""

    type: ClassVar[str] = "data_ready"
    out_dir: str
    train_tokens: int
    val_tokens: int
    documents: int
    cached: bool = False
    vocab_size: int = 0  # the tokenizer's ids, before padding (a char vocabulary: now known)


@dataclass
class Progress(Event):
    type: ClassVar[str] = "progress"
    task: str  # "prepare", "tokenizer", ...
    done: float
    total: float | None = None
    unit: str = ""  # of done and total: "B" for bytes
    tokens: int | None = None  # produced so far, where the task makes tokens


EVENTS: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        Start, Step, Eval, Sample, Checkpoint, Done, Error, Log, Progress, Paused, Resumed,
        DataReady, Adjusted,
    )
}  # fmt: skip


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


TURN_ROLES = ("user", "assistant")  # the roles of a conversation's earlier turns


@dataclass
class SampleRequest(Command):
    """Answered by a `sample` event with the same id, generated from the live weights.

    A chat-tuned run answers `prompt` as the user's turn after `system` and the earlier
    `turns` ({"role": "user"|"assistant", "content": ...}); a base run continues `prompt` and
    ignores both."""

    type: ClassVar[str] = "sample"
    prompt: str
    max_tokens: int = Sampling.max_tokens
    temperature: float = Sampling.temperature
    top_k: int = Sampling.top_k
    top_p: float = Sampling.top_p
    id: str = ""
    system: str = ""
    turns: list[dict[str, str]] = field(default_factory=list)

    def sampling(self) -> Sampling:
        """The request's settings, checked against the one set of limits."""
        return Sampling(
            max_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p,
        ).validated()  # fmt: skip


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
    if isinstance(message, SampleRequest):  # range-checked here, before it reaches a run
        found = sampling_faults(
            message.prompt, max_tokens=message.max_tokens, temperature=message.temperature,
            top_k=message.top_k, top_p=message.top_p,
        )  # fmt: skip
        found += turn_faults(message.turns)
        if found:
            raise ProtocolError(f"bad 'sample' message: {'; '.join(found)}")
    return message


def turn_faults(turns: list[Any]) -> list[str]:
    """What is wrong with a sample request's earlier turns, one phrase each."""
    for n, turn in enumerate(turns):
        if not (
            isinstance(turn, dict) and turn.get("role") in TURN_ROLES
            and isinstance(turn.get("content"), str) and len(turn) == 2
        ):  # fmt: skip
            return [f"turn {n} must be {{'role': 'user' or 'assistant', 'content': text}}"]
    total = sum(len(t["content"]) for t in turns)
    if total > MAX_PROMPT_CHARS:
        return [f"turns of {total:,} characters are over {MAX_PROMPT_CHARS:,}"]
    return []


def encode(message: Message) -> bytes:
    return message.to_json().encode("utf-8") + b"\n"


def decode(line: bytes | str, kinds: dict[str, type[Message]] | None = None) -> Any:
    """One NDJSON line to a message of `kinds` (default: events); else ProtocolError."""
    record = loads_line(line)
    if not isinstance(record, dict):
        raise ProtocolError("not a JSON object")
    return from_dict(record, kinds)


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


# ---------------------------------------------------------------------------------------------
# Chat over pipes: `python -m engine.generate SOURCE --serve`
#
# The studio writes one JSON request per line to the process's stdin and reads NDJSON replies
# from its stdout: `ready` once, then for each request zero or more `token` pieces and one `end`,
# or one `error` for a request that cannot be served (the server carries on).
#
#     -> {"id": 1, "prompt": "Once upon a time", "max_tokens": 50, "temperature": 0.8}
#     <- {"type": "token", "id": 1, "text": " there"}
#     <- {"type": "end", "id": 1, "tokens": 50, "tokens_per_s": 31.5, "truncated_prompt": false}

RequestId = str | int | None


@dataclass
class ChatRequest(Message):
    """One prompt to continue. A setting left as None takes the default in
    engine.contract.sampling, so the defaults live in one place. On the wire it has no `type`."""

    type: ClassVar[str] = "request"

    id: RequestId = None
    prompt: str | None = None  # "" starts a new document; None (with reset) only resets
    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None  # None: random
    chat: bool = False  # continue the conversation of earlier chat requests
    reset: bool = False  # forget the conversation first
    system: str | None = None  # a chat-tuned model's system prompt; set, it starts afresh

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        return dumps_line(record)

    def sampling(self, base: Sampling | None = None) -> Sampling:
        """`base` with this request's settings over it, checked against the one set of limits."""
        return (base or Sampling()).replace(
            max_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=self.seed,
        )  # fmt: skip


_KINDS: dict[str, tuple[type, ...]] = {
    "id": (str, int),
    "prompt": (str,),
    "max_tokens": (int,),
    "temperature": (int, float),
    "top_k": (int,),
    "top_p": (int, float),
    "repetition_penalty": (int, float),
    "seed": (int,),
    "chat": (bool,),
    "reset": (bool,),
    "system": (str,),
}


class ChatRequestError(ProtocolError):
    """A request line that cannot be read; `id` is the request's when it could be found."""

    def __init__(self, message: str, id: RequestId = None) -> None:
        super().__init__(message)
        self.id = id


def parse_chat_request(line: str | bytes) -> ChatRequest:
    """One request line to a Request; a wrong key or type is a RequestError naming it."""
    try:
        record = loads_line(line, "request")
    except ProtocolError as err:
        raise ChatRequestError(str(err)) from None
    if isinstance(record, dict) and record.get("type") == ChatRequest.type:
        record = {k: v for k, v in record.items() if k != "type"}
    if not isinstance(record, dict):
        raise ChatRequestError('request must be a JSON object, e.g. {"prompt": "Hello"}')
    rid = record.get("id")
    rid = rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
    for key, value in record.items():
        if key not in _KINDS:
            raise ChatRequestError(
                f"unknown request field {key!r}; known: {', '.join(_KINDS)}", rid
            )
        kinds = _KINDS[key]
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (wrong_bool or not isinstance(value, kinds)):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ChatRequestError(f"request field {key!r} must be {wanted}, got {value!r}", rid)
    request = ChatRequest(**{k: v for k, v in record.items() if v is not None})
    if request.prompt is None and not request.reset:
        raise ChatRequestError("request needs a 'prompt' (or only \"reset\": true)", rid)
    found = sampling_faults(
        request.prompt, max_tokens=request.max_tokens, temperature=request.temperature,
        top_k=request.top_k, top_p=request.top_p,
        repetition_penalty=request.repetition_penalty, seed=request.seed,
    )  # fmt: skip
    if found:
        raise ChatRequestError(f"request refused: {'; '.join(found)}", rid)
    return request


@dataclass
class ChatReply(Message):
    """What `--serve` writes back, one per line."""


@dataclass
class ChatReady(ChatReply):
    type: ClassVar[str] = "ready"
    checkpoint: str
    step: int
    params: int
    block_size: int
    chat_tuned: bool = False  # its tokenizer has the chat template: prompts are user turns


@dataclass
class ChatToken(ChatReply):
    """A piece of the continuation: whole characters, to be appended as they come."""

    type: ClassVar[str] = "token"
    id: RequestId
    text: str


@dataclass
class ChatEnd(ChatReply):
    type: ClassVar[str] = "end"
    id: RequestId
    tokens: int
    tokens_per_s: float
    truncated_prompt: bool  # the prompt (with the conversation) was cut to the context


@dataclass
class ChatError(ChatReply):
    type: ClassVar[str] = "error"
    id: RequestId
    message: str


REPLIES: dict[str, type[ChatReply]] = {
    cls.type: cls for cls in (ChatReady, ChatToken, ChatEnd, ChatError)
}


def parse_chat_reply(line: str | bytes) -> ChatReply:
    """One reply line to its dataclass, for the studio; anything else raises ProtocolError."""
    return decode(line, REPLIES)


def encode_chat(reply: ChatReply) -> str:
    """The reply as one line, newline included."""
    return reply.to_json() + "\n"
