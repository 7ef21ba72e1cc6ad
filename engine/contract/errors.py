"""The one exception type for mistakes a user can fix.

Raised where the mistake is found, with a message that names the thing at fault and what would be
accepted. Command-line entry points turn it into one line on stderr and exit code 2; any other
exception is our bug and keeps its traceback.

A program that starts a command (the studio) sets GPT_STUDIO_ERRORS=json in its environment and
gets that line as an `error` event record instead (engine.contract.events.Error), with the fields
of a ConfigError, so it reads the field at fault instead of parsing text.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TypeVar

EXIT_USAGE = 2
ERRORS_ENV = "GPT_STUDIO_ERRORS"  # "json": a usage error is written as an `error` event record

F = TypeVar("F", bound=Callable[..., int | None])


class UsageError(Exception):
    """A bad input: a path, a value, a file the user gave us."""


# What the machine said, as the fix a user would make; anything else keeps its own words.
_CAUSES = {
    errno.ENOSPC: "no space left on the device; free some space or choose another folder",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, where a file was expected",
    errno.ENAMETOOLONG: "the name is too long for this file system",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EIO: "an input/output error from the device; check the disk",
}
ENVIRONMENT_ERRNOS = frozenset(_CAUSES)


def environment_error(err: OSError, path: object = None, doing: str = "") -> UsageError:
    """One line for a fault of the machine rather than of our code: the path and the fix."""
    where = path if path is not None else (err.filename or "")
    cause = _CAUSES.get(err.errno or 0) or (err.strerror or str(err)).splitlines()[0]
    what = f"{doing} " if doing else ""
    return UsageError(f"{what}{where}: {cause}" if where else f"{what.strip()}: {cause}")


@contextmanager
def on_disk(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """Turn an OSError from the machine (no space, read-only, a file where a folder should be)
    into one UsageError naming `path` and what we were `doing`; "writing" for instance."""
    try:
        yield
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRNOS:
            raise environment_error(err, path, doing) from None
        raise
    except RuntimeError as err:  # torch.save reports a full disk as a write failure
        if _is_torch_write_failure(err):
            raise environment_error(OSError(errno.ENOSPC, "no space"), path, doing) from None
        raise


def _is_torch_write_failure(err: RuntimeError) -> bool:
    text = str(err)
    return "unexpected pos" in text or "PytorchStreamWriter failed writing" in text


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
        except OSError as err:  # a fault of the machine no library call turned into words
            if err.errno not in ENVIRONMENT_ERRNOS:
                raise
            report(environment_error(err))
            return EXIT_USAGE
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, without a traceback
            print("interrupted; the checkpoints already written are kept", file=sys.stderr)
            return 130

    return wrapper  # type: ignore[return-value]
