"""Talking to a model over pipes: `python -m engine.generate SOURCE --serve`.

The studio writes one JSON request per line to the process's stdin and reads NDJSON replies
from its stdout: `ready` once, then for each request zero or more `token` pieces and one `end`,
or one `error` for a request that cannot be served (the server carries on). This module never
imports torch, so the studio can build requests and read replies without loading the engine.

    -> {"id": 1, "prompt": "Once upon a time", "max_tokens": 50, "temperature": 0.8}
    <- {"type": "token", "id": 1, "text": " there"}
    <- {"type": "end", "id": 1, "tokens": 50, "tokens_per_s": 31.5, "truncated_prompt": false}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from engine.protocol import ProtocolError, loads, sampling_faults

RequestId = str | int | None


@dataclass
class Request:
    """One prompt to continue. A setting left as None takes the engine's default
    (engine.generate.Sampling), so the defaults live in one place."""

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

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        return json.dumps(record, ensure_ascii=False)


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
}


class RequestError(ProtocolError):
    """A request line that cannot be read; `id` is the request's when it could be found."""

    def __init__(self, message: str, id: RequestId = None) -> None:
        super().__init__(message)
        self.id = id


def parse_request(line: str | bytes) -> Request:
    """One request line to a Request; a wrong key or type is a RequestError naming it."""
    try:
        record = loads(line)
    except ProtocolError as err:
        if str(err) == "not a JSON object":
            raise RequestError('request must be a JSON object, e.g. {"prompt": "Hello"}') from None
        raise RequestError(f"request refused: {err}") from None
    rid = record.get("id")
    rid = rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
    for key, value in record.items():
        if key not in _KINDS:
            raise RequestError(f"unknown request field {key!r}; known: {', '.join(_KINDS)}", rid)
        kinds = _KINDS[key]
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (wrong_bool or not isinstance(value, kinds)):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise RequestError(f"request field {key!r} must be {wanted}, got {value!r}", rid)
    request = Request(**{k: v for k, v in record.items() if v is not None})
    faults = sampling_faults(
        request.max_tokens, request.temperature, request.top_k, request.top_p, request.seed,
        request.prompt,
    )  # fmt: skip
    if faults:
        raise RequestError(f"request refused: {'; '.join(faults)}", rid)
    if request.prompt is None and not request.reset:
        raise RequestError("request needs a 'prompt' (or only \"reset\": true)", rid)
    return request


@dataclass
class Reply:
    type: ClassVar[str] = ""

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **asdict(self)}, ensure_ascii=False)


@dataclass
class Ready(Reply):
    type: ClassVar[str] = "ready"
    checkpoint: str
    step: int
    params: int
    block_size: int


@dataclass
class Token(Reply):
    """A piece of the continuation: whole characters, to be appended as they come."""

    type: ClassVar[str] = "token"
    id: RequestId
    text: str


@dataclass
class End(Reply):
    type: ClassVar[str] = "end"
    id: RequestId
    tokens: int
    tokens_per_s: float
    truncated_prompt: bool  # the prompt (with the conversation) was cut to the context


@dataclass
class Error(Reply):
    type: ClassVar[str] = "error"
    id: RequestId
    message: str


REPLIES: dict[str, type[Reply]] = {cls.type: cls for cls in (Ready, Token, End, Error)}


def parse_reply(line: str | bytes) -> Reply:
    """One reply line to its dataclass, for the studio; anything else raises ProtocolError."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"reply is not JSON: {err}") from None
    kind = record.get("type") if isinstance(record, dict) else None
    cls = REPLIES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown reply type {kind!r}; expected one of {', '.join(REPLIES)}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError as err:
        raise ProtocolError(f"bad {kind!r} reply: {err}") from None


def encode(reply: Reply) -> str:
    """The reply as one line, newline included."""
    return reply.to_json() + "\n"
