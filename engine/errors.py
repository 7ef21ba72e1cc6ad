"""The one exception type for mistakes a user can fix.

Raised where the mistake is found, with a message that names the thing at fault and what would be
accepted. Command-line entry points turn it into one line on stderr and exit code 2; any other
exception is our bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., int | None])


class UsageError(Exception):
    """A bad input: a path, a value, a file the user gave us."""


def cli_entry(main: F) -> F:
    """Wrap a command-line `main` so a UsageError becomes one stderr line and exit code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except BrokenPipeError:  # `... | head` closed the pipe: nothing left to say
            sys.stderr.close()
            return 0

    return wrapper  # type: ignore[return-value]
