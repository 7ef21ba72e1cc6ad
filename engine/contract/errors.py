"""The one exception type for mistakes a user can fix.

Raised where the mistake is found, with a message that names the thing at fault and what would be
accepted. Command-line entry points turn it into one line on stderr and exit code 2; any other
exception is our bug and keeps its traceback.

A program that starts a command (the studio) sets GPT_STUDIO_ERRORS=json in its environment and
gets that line as an `error` event record instead (engine.contract.events.Error), with the fields
of a ConfigError, so it reads the field at fault instead of parsing text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

EXIT_USAGE = 2
ERRORS_ENV = "GPT_STUDIO_ERRORS"  # "json": a usage error is written as an `error` event record

F = TypeVar("F", bound=Callable[..., int | None])


class UsageError(Exception):
    """A bad input: a path, a value, a file the user gave us."""


def error_record(err: UsageError) -> dict[str, object]:
    """The `error` event (engine.contract.events.Error) for a usage error, as plain JSON data."""
    fields = err.to_dict() if hasattr(err, "to_dict") else {}
    return {"type": "error", "message": str(err), **fields}


def report(err: UsageError) -> None:
    """The command-line boundary's one line on stderr: text for people, JSON for the studio."""
    if os.environ.get(ERRORS_ENV) == "json":
        line = json.dumps(error_record(err), ensure_ascii=False, default=str)
    else:
        line = f"error: {err}"
    print(line, file=sys.stderr)


def cli_entry(main: F) -> F:
    """Wrap a command-line `main` so a UsageError becomes one stderr line and exit code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            report(err)
            return EXIT_USAGE
        except BrokenPipeError:  # `... | head` closed the pipe: nothing left to say
            sys.stderr.close()
            return 0

    return wrapper  # type: ignore[return-value]
