"""Writing files so that a crash leaves the old file or the new one, never half of either.

Checkpoints, manifests, cached tokenizers and configs all go through here: a temporary file in the
same folder, flushed and fsynced, then renamed over the target, then the folder itself fsynced so
the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from engine.contract.errors import on_disk


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """A file object whose contents replace `path` only if the block finishes without error."""
    path = Path(path)
    with on_disk(path.parent, "creating the folder"):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    encoding = None if "b" in mode else "utf-8"
    with on_disk(path, "writing"):  # no space, read-only, ...: one line naming the file
        try:
            with open(tmp, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(file)` on a temporary binary file, then move it into place."""
    with atomic_open(path, "wb") as f:
        write(f)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames inside `path` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- what a killed writer leaves behind --------------------------------------------------------

# atomic_open's temporary files, and engine.data's temporary dataset folders: both carry the pid
# of the process writing them, so a later start can tell a dead writer's leftovers from a live one's.
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$|^\..+\.tmp-(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a killed child not yet reaped by its parent still answers kill(0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """Delete the temporary files and folders in `folder` whose writing process is dead.

    A kill -9 during a checkpoint write leaves a hidden `.step_*.pt.<pid>.tmp` as large as a
    checkpoint; a SIGTERM during data preparation leaves a `.<dataset>.tmp-<pid>` folder. Returns
    what was removed, with its size in bytes, so the caller can say so.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or pid_alive(int(match.group(1) or match.group(2))):
            continue
        size = _size(entry)
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # not ours to remove after all (permissions): left as it was
        removed.append((entry, size))
    return removed


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0
