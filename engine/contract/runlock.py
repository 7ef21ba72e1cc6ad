"""One writer per run folder: an OS lock held for the life of the run.

Two starts of one run name (two studios, a studio and a shell, or `--resume` of a run still
training) would interleave metrics.jsonl and mix the checkpoints of two runs. The trainer takes
this lock before it writes anything to the folder and holds it until it exits; the kernel drops
it when the process dies however it dies (kill -9 included), so a stale lock never blocks
anyone. The lock file records who holds it, so the second writer is told which process to look
at, and the studio shows such a run as training elsewhere instead of offering to resume it.

`flock` locks belong to the open file, not to the path: the holder checks that the path still
names the file it locked, so a release that removes the file never lets two writers in.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from engine.contract.errors import UsageError, environment_error

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per folder is then on the user
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"
RETRY_S = 0.5  # a studio probing the lock holds it for microseconds: retry that long first


class RunLocked(UsageError):
    """Another live process is writing this run folder."""

    def __init__(self, run_dir: Path, holder: dict) -> None:
        pid = holder.get("pid", "?")
        host = holder.get("host")
        since = holder.get("since")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""
        super().__init__(
            f"{run_dir} is being trained by process {pid}{where}{when}; wait for it to finish or "
            "stop it, or start a new run with --name=NEW_NAME (or --branch to copy it)"
        )
        self.pid = pid


class RunLock:
    """The exclusive lock of one run folder: `with RunLock(run_dir):` or acquire()/release()."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._made_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLocked naming the live holder; creates the folder."""
        if fcntl is None or self._fd is not None:
            return self
        try:
            self._made_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise environment_error(err, self.run_dir, "creating the run folder") from None
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise environment_error(err, self.path, "creating the run lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise RunLocked(self.run_dir, read_holder(self.run_dir)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed it as we opened it: lock the new one
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode() + b"\n")
        return self

    def release(self) -> None:
        """Let go; a folder this lock created and nothing else used is removed again, so a run
        that could not start leaves nothing behind."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            others = [p for p in self.run_dir.iterdir() if p.name != LOCK_NAME]
            os.ftruncate(fd, 0)
            if self._made_dir and not others:
                self.path.unlink()
                self.run_dir.rmdir()
        os.close(fd)  # the kernel releases the lock with the last descriptor

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(run_dir: str | os.PathLike[str]) -> dict:
    """What the lock file says about its holder ({} when unreadable)."""
    try:
        record = json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holder(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the live process writing `run_dir`, or None when nobody is.

    Probes with a shared lock taken and dropped at once (a starting writer retries for
    RETRY_S, so a probe never turns one away).
    """
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = read_holder(run_dir).get("pid")
        return pid if isinstance(pid, int) else -1
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
