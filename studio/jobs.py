"""Engine jobs as subprocesses: training over a link, one-shot commands, the chat server.

The studio never runs engine code in its own process (that would load torch). Every job is
`python -m engine.<module> ...` with the interpreter running the studio, in the studio's working
directory, so relative paths in a config mean the same thing to both.

A training job is started with subprocess.Popen in a session of its own rather than through
asyncio: an asyncio subprocess is killed when its transport closes, and a run the user chose to
leave training must outlive the studio (and the terminal's hang-up). Its stdout is discarded
(every event arrives on the link) and its stderr goes to a file whose tail is shown if it dies.
Shorter jobs (inspect, prepare, chat) are asyncio subprocesses, killed when the studio goes.

The long-lived adapters (TrainJob, ChatServer) are run by a pane's worker (`await job.run()`)
and post what they hear as studio.messages to that pane; the pane holds the adapter only to send
it commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.contract import events as p
from engine.contract import framing
from engine.contract.config import Config, save
from engine.contract.errors import ERRORS_ENV
from engine.contract.rundir import RunDir
from studio.link import EngineLink, Target, private_dir
from studio.messages import (
    ChatExited,
    ChatNote,
    ChatReply,
    Detached,
    EngineConnected,
    EngineExited,
    EngineNote,
    RunEvents,
)

TAIL_LINES = 15
POLL_S = 0.2  # how often a training job is checked for having exited


def engine_command(module: str, *args: str) -> list[str]:
    """`python -m engine.X ARGS` with the interpreter running the studio."""
    return [sys.executable, "-m", module, *args]


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[ERRORS_ENV] = "json"  # a usage error comes back as an `error` record, not text
    return env


def tail_lines(text: str, n: int = TAIL_LINES) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


@dataclass
class Exit:
    """How a job ended: its exit code (negative: killed by that signal) and its last words."""

    code: int
    stderr: list[str] = field(default_factory=list)
    error: p.Error | None = None  # the engine's own usage error, with its fields
    ranks: dict[int, str] = field(default_factory=dict)  # under torchrun: each failed rank's

    @classmethod
    def read(cls, code: int, lines: list[str]) -> Exit:
        """An exit from the engine's last stderr lines: an `error` record becomes `error` (and
        its readable line), everything else is kept as written."""
        error, shown = None, []
        for line in lines:
            if line.startswith("{"):
                try:
                    error = p.decode(line, {p.Error.type: p.Error})
                except framing.ProtocolError:
                    pass
                else:
                    shown.append(f"error: {error.message}")
                    continue
            shown.append(line)
        return cls(code, shown, error)

    def describe(self) -> str:
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            return f"the engine was killed by {name} (exit code {self.code})"
        return f"the engine exited with code {self.code}"


RANK_LOGS = "ranks"  # under the job's folder: torchrun's log of each rank's stderr


def train_command(args: list[str], processes: int, folder: Path) -> list[str]:
    """`python -m engine.train ARGS`, or with several processes the same under torchrun on this
    machine (each rank's stderr kept apart, so a rank that fails is shown with its own error)."""
    if processes <= 1:
        return engine_command("engine.train", *args)
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", f"--log-dir={folder / RANK_LOGS}", "--redirects=2",
        "-m", "engine.train", *args,
    ]  # fmt: skip


def rank_errors(logs: Path) -> dict[int, str]:
    """Each failed rank's own error (its `error` record, else its last line), by rank."""
    out: dict[int, str] = {}
    for path in sorted(logs.glob("**/stderr.log")):
        try:
            rank = int(path.parent.name)
            lines = tail_lines(path.read_text(encoding="utf-8", errors="replace"))
        except (ValueError, OSError):
            continue
        exit = Exit.read(1, lines)
        if exit.error is not None:
            out[rank] = exit.error.message
        elif any("Error" in line or "error" in line for line in lines):
            out[rank] = lines[-1]
    return out


class TrainJob:
    """`python -m engine.train CONFIG --report-to ADDRESS`, and the link it reports to.

    `run()` is the body of a worker: it starts the engine, and returns once the engine has
    ended (posting `EngineExited`) or the user left it training (`leave()`). Events, notes and
    the connection arrive at `target` as messages from the link meanwhile.

    The config is written into the job's private directory first, so a user's own file is never
    touched; the engine then writes the resolved config into the run directory itself.
    """

    def __init__(
        self,
        target: Target,
        *,
        force_tcp: bool = False,
        command: Callable[[list[str]], list[str]] | None = None,
        processes: int = 1,
    ) -> None:
        self.target = target
        self.folder = private_dir()
        self.link = EngineLink(target, folder=self.folder, force_tcp=force_tcp)
        self.processes = processes
        # what to run for the engine's arguments; a benchmark swaps in a stand-in engine
        self.command = command or (lambda args: train_command(args, processes, self.folder))
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit: Exit | None = None
        self.left = False  # the user left it training headless: no longer ours
        self._ended = asyncio.Event()  # run() has returned, whichever way

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exit is None and not self.left

    async def run(self, config: Config, *, resume: bool = False) -> Exit | None:
        """Start the engine on `config` and watch it until it ends; None if it was left.

        OSError: the engine could not be started (nothing is left running then).
        """
        try:
            self._start(config, resume, await self.link.open())
            while (code := self.proc.poll()) is None and not self.left:  # type: ignore[union-attr]
                await asyncio.sleep(POLL_S)
            if self.left:
                return None
            await self.link.drained(2.0)  # what the engine said last is still on the wire
            try:
                text = (self.folder / "stderr.log").read_bytes()[-16384:]
            except OSError:
                text = b""
            self.exit = Exit.read(code, tail_lines(text.decode("utf-8", "replace")))
            if self.processes > 1:
                self.exit.ranks = rank_errors(self.folder / RANK_LOGS)
            self.target.post_message(EngineExited(self.exit))
            return self.exit
        finally:
            await self.link.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self._ended.set()

    def _start(self, config: Config, resume: bool, address: str) -> None:
        path = save(config, self.folder / "config.toml")
        args = [str(path), *(["--resume"] if resume else []), "--report-to", address]
        with open(self.folder / "stderr.log", "wb") as stderr:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                self.command(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=engine_env(self.link.env),
                start_new_session=True,  # a terminal's Ctrl-C or hang-up is the studio's alone
            )

    def send(self, command: p.Command) -> bool:
        return self.running and self.link.send(command)

    async def stop(self, timeout: float = 60.0) -> Exit | None:
        """Ask for a checkpoint and an end; SIGTERM (which also checkpoints), then SIGKILL."""
        if not self.running:
            return self.exit
        if not self.link.send(p.Stop()):
            self._signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout)
                return self.exit
            self._signal(sig)
            timeout = 10.0
        await self._ended.wait()
        return self.exit

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def leave(self) -> None:
        """Hang up without stopping it: the engine notices and carries on headless."""
        self.left = True
        await self.link.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ended.wait(), 2 * POLL_S + 1.0)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class AttachJob:
    """Watch and command a run this studio did not start, through its control endpoint.

    The run may have been left training by another studio, or started headless (engine.remote
    says how it listens). `run()` is the body of a worker: it connects, presents the token,
    posts the run's history and then its live events as `RunEvents`, and `Detached` when the
    connection ends. Stopping asks the run to stop; leaving just hangs up.
    """

    def __init__(self, target: Target, address: str, token: str = "") -> None:
        self.target = target
        self.address = address
        self.token = token
        self.left = False
        self._writer: asyncio.StreamWriter | None = None
        self._ended = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._writer is not None and not self._ended.is_set() and not self.left

    async def run(self) -> None:
        """OSError: nothing listens there (the run has ended, or the address is wrong)."""
        try:
            kind, where = framing.parse_address(self.address)
        except framing.ProtocolError as err:
            raise OSError(str(err)) from None
        if kind == "unix":
            reader, writer = await asyncio.open_unix_connection(str(where))
        else:
            reader, writer = await asyncio.open_connection(*where)  # type: ignore[misc]
        writer.write(p.encode(p.Hello(token=self.token, pid=os.getpid())))
        self._writer = writer
        self.target.post_message(EngineConnected())
        lines, ended = framing.LineBuffer(), False
        try:
            while data := await reader.read(1 << 16):
                events = []
                for line in lines.feed(data):
                    try:
                        events.append(p.decode(line))
                    except framing.ProtocolError as err:
                        self.target.post_message(EngineNote(f"dropped a message: {err}"))
                if events:
                    ended = ended or any(isinstance(e, p.Done) for e in events[-3:])
                    self.target.post_message(RunEvents(events))
        except OSError:
            pass
        finally:
            self._writer = None
            with contextlib.suppress(Exception):
                writer.close()
            self._ended.set()
        if not self.left:
            self.target.post_message(Detached(finished=ended))

    def send(self, command: p.Command) -> bool:
        if not self.running or self._writer is None:
            return False
        self._writer.write(p.encode(command))
        return True

    async def stop(self, timeout: float = 60.0) -> None:
        """Ask the run to write a checkpoint and end, and wait until it has hung up."""
        if self.send(p.Stop()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout)

    async def leave(self) -> None:
        """Hang up; the run trains on, as it would with nobody watching."""
        self.left = True
        if self._writer is not None:
            self._writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ended.wait(), 2.0)


class MetricsFollower:
    """Reads a run's metrics.jsonl as it grows and posts what is new as `RunEvents`.

    `run()` is the body of a worker and reads until the worker is cancelled: the run may be
    training elsewhere (headless, or on a server whose folder is synced here).
    """

    def __init__(self, target: Target, run_dir: Path, every: float) -> None:
        self.target = target
        self.tail = RunDir(run_dir).tail()
        self.every = every
        self.reads = 0  # how many times the file was looked at: tests wait on it

    def read(self) -> None:
        events = self.tail.read_new()
        self.reads += 1
        if events:
            self.target.post_message(RunEvents(events))

    async def run(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(self.every)


async def run_engine(
    module: str, *args: str, on_line: Callable[[bytes], None] | None = None
) -> tuple[Exit, bytes]:
    """Run a one-shot engine command; each stdout line goes to `on_line` as it comes.

    Returns how it ended and, when there is no `on_line`, its whole stdout. Cancelling the
    awaiting task kills the process.
    """
    proc = await asyncio.create_subprocess_exec(
        *engine_command(module, *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=engine_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()

    async def read_stdout() -> None:
        lines = framing.LineBuffer()
        while data := await proc.stdout.read(1 << 16):  # type: ignore[union-attr]
            if on_line is None:
                out.extend(data)
                continue
            for line in lines.feed(data):
                on_line(line)

    try:
        _, err = await asyncio.gather(read_stdout(), proc.stderr.read())
        code = await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return Exit.read(code, tail_lines(err.decode("utf-8", "replace"))), bytes(out)


def first_error(exit: Exit) -> str:
    """The engine's own usage error (its `error` record), else how it ended."""
    if exit.error is not None:
        return exit.error.message
    if exit.ranks:
        return "; ".join(f"rank {rank}: {error}" for rank, error in sorted(exit.ranks.items()))
    return exit.describe() + (f": {exit.stderr[-1]}" if exit.stderr else "")


class ChatServer:
    """`python -m engine.generate SOURCE --serve`: requests in on stdin, replies out on stdout.

    `run()` is the body of a worker. Typed replies (ChatReady, ChatToken, ChatEnd, ChatError) reach
    `target` in `ChatReply` messages, a line that is not a JSON object with a `type` as a `ChatNote`, and
    an end nobody asked for (`close()`) as `ChatExited`.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=TAIL_LINES)
        self.closing = False
        self._ended = asyncio.Event()

    async def run(self, source: str) -> None:
        """Serve `source` until the process ends. OSError: it could not be started."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *engine_command("engine.generate", source, "--serve"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=engine_env(),
            )
            readers = asyncio.gather(self._read_stdout(), self._read_stderr())
            try:
                code = await self.proc.wait()
                with contextlib.suppress(asyncio.TimeoutError):  # the last lines it wrote
                    await asyncio.wait_for(asyncio.shield(readers), 2.0)
            finally:
                readers.cancel()
                readers.add_done_callback(lambda f: f.cancelled() or f.exception())
                if self.proc.returncode is None:  # the worker was cancelled: no orphans
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    await self.proc.wait()
            if not self.closing:
                self.target.post_message(ChatExited(Exit.read(code, list(self._stderr))))
        finally:
            self._ended.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def ask(self, request: p.ChatRequest) -> bool:
        """Send one request line; False when the server is gone."""
        if not self.running or self.proc is None or self.proc.stdin is None:
            return False
        self.proc.stdin.write(request.to_json().encode() + b"\n")
        return True

    async def close(self) -> None:
        """End the server: closing stdin is its signal to exit; a kill if it does not."""
        self.closing = True
        if self.proc is None:
            return
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 3.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        lines = framing.LineBuffer()
        while data := await self.proc.stdout.read(1 << 16):
            for line in lines.feed(data):
                try:
                    reply = p.parse_chat_reply(line)
                except framing.ProtocolError:
                    self.target.post_message(
                        ChatNote(f"ignored a line from the chat server: {line[:80]!r}")
                    )
                else:
                    self.target.post_message(ChatReply(reply))

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
