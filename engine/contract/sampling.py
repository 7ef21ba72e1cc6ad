"""How the next token is chosen: every sampling setting, its default, its limits and its check,
defined once.

The generate command, the chat REPL, `--serve`, live samples during training, the studio's
`sample` command and the studio's chat form all build a `Sampling` (or read `LIMITS`), so a new
setting is one field and one `Limit` here plus the places that use it. "New tokens" has one name
everywhere: `max_tokens` (the `--max-tokens` flag, the request field, the form field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from engine.contract.errors import UsageError


@dataclass(frozen=True)
class Limit:
    """What a numeric setting accepts, and how to say so."""

    label: str  # as a person reads it in an error: "top-p"
    kind: type  # int or float
    low: float
    high: float | None = None  # None: no upper bound
    low_open: bool = False  # low itself is refused
    note: str = ""  # what a special value means: "0: greedy"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def describe(self) -> str:
        """'a whole number from 1 to 65536', 'a number above 0 and at most 1 (1: off)'."""
        noun = "a whole number" if self.kind is int else "a number"
        low = f"above {self.low:g}" if self.low_open else f"from {self.low:g}"
        if self.high is None:
            span = f"above {self.low:g}" if self.low_open else f"of {self.low:g} or more"
        elif self.low_open:
            span = f"{low} and at most {self.high:g}"
        else:
            span = f"{low} to {self.high:g}"
        return f"{noun} {span}" + (f" ({self.note})" if self.note else "")


MAX_TOKENS_LIMIT = 1 << 16

LIMITS: dict[str, Limit] = {
    "max_tokens": Limit("max tokens", int, 1, MAX_TOKENS_LIMIT),
    "temperature": Limit("temperature", float, 0, 5, note="0: greedy"),  # above 5: noise
    "top_k": Limit("top-k", int, 0, note="0: off"),
    "top_p": Limit("top-p", float, 0, 1, low_open=True, note="1: off"),
    "repetition_penalty": Limit("repetition penalty", float, 0, low_open=True, note="1: off"),
}


@dataclass(frozen=True)
class Sampling:
    """How to choose each next token; every value is checked once, on construction: a bad value
    is a UsageError naming the setting and what it accepts."""

    max_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 200  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; above 1 discourages tokens already present
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a fresh random seed per generation

    def __post_init__(self) -> None:
        self.validated()

    def validated(self) -> Sampling:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not limit.accepts(value):
                accepted = limit.describe().removeprefix("a number ")
                raise UsageError(f"{limit.label} must be {accepted}, got {value!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UsageError(f"stop strings must be non-empty text, got {list(self.stop)!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise UsageError(f"seed must be a whole number, got {self.seed!r}")
        return self

    @classmethod
    def checked(cls, **settings: Any) -> Sampling:
        """A validated Sampling from settings where None means "the default"."""
        return cls(**{k: v for k, v in settings.items() if v is not None}).validated()

    def replace(self, **changes: Any) -> Sampling:
        """A copy with `changes` (None keeps the current value), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes).validated()


DEFAULTS = Sampling()
FORM_FIELDS = ("temperature", "top_k", "top_p", "max_tokens")  # what the studio's chat form edits
