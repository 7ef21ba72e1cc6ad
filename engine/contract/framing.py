"""NDJSON framing: how a record becomes one line and a byte stream becomes lines again, and how
the engine finds the studio (a socket address and a token).

JSON has no NaN or Infinity and the engine never writes them (`finite_or_none`), so a line that
carries one is refused here rather than turning into a float no chart can draw.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_LINE_BYTES = 1 << 20  # a longer line is dropped: no record we write comes close
TOKEN_ENV = "GPT_STUDIO_TOKEN"  # a TCP engine proves it was started by this studio


class ProtocolError(ValueError):
    """A line that is not one of our messages; readers log it and carry on."""


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(
        f"{name} is not JSON; the engine writes null for a value that is not finite"
    )


MAX_DEPTH = 16  # of nested objects and lists: a config is 3 deep, nothing we write is deeper
MAX_INT = 2**63 - 1  # every whole number we exchange (steps, seeds, counts) fits in int64


def loads_line(line: bytes | str, what: str = "line") -> Any:
    """One NDJSON line to a JSON value any reader can use safely; anything else is a
    ProtocolError, never another exception.

    Refused: a line over the size limit, not JSON, NaN or Infinity, a number too large for a
    float or an int64, nesting deeper than MAX_DEPTH, and text with a lone surrogate (which
    would fail later, when the reader writes it out). Every reader of our lines decodes here:
    the engine's command reader, the studio's event reader, the run-folder scanner, `--serve`.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"{what} of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if "integer string conversion" in str(err):
            raise ProtocolError(f"{what} holds a whole number outside the 64-bit range") from None
        raise ProtocolError(f"{what} is not JSON: {str(err).splitlines()[0][:200]}") from None
    _check_values(value, 0, what)
    return value


def _check_values(value: Any, depth: int, what: str) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{what} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ProtocolError(f"{what} holds a whole number outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{what} holds a number too large for a float")
    elif isinstance(value, str):
        _check_text(value, what)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, what)
            _check_values(item, depth + 1, what)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1, what)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            f"{what} holds text with a lone surrogate (not valid Unicode)"
        ) from None


def dumps_line(record: dict[str, Any], default: Any = None) -> str:
    """A record as one JSON line (no newline); NaN or Infinity is our bug and raises ValueError."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False, default=default)


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
