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


def loads_line(line: bytes | str, what: str = "line") -> Any:
    """One NDJSON line to its JSON value, refusing over-long lines, non-JSON and NaN/Infinity."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"{what} of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{what} is not JSON: {err}") from None


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
