"""Engine jobs as subprocesses: training over a link, one-shot commands, the chat server.

The studio never runs engine code in its own process (that would load torch). Every job is
`python -m engine.<module> ...` with the interpreter running the studio, in the studio's working
directory, so relative paths in a config mean the same thing to both.

A training job is started with subprocess.Popen in a session of its own rather than through
asyncio: an asyncio subprocess is killed when its transport closes, and a run the user chose to
leave training must outlive the studio (and the terminal's hang-up). Its stdout is discarded
(every event arrives on the link) and its stderr goes to a file whose tail is shown if it dies.
Shorter jobs (inspect, prepare, chat) are asyncio subprocesses, killed when the studio goes.
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

from engine.contract import events as p
from engine.contract import framing
from engine.contract.config import Config, save
from engine.contract.errors import ERRORS_ENV
from studio.link import EngineLink, private_dir

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


class TrainJob:
    """`python -m engine.train CONFIG --report-to ADDRESS`, and the link it reports to.

    The config is written into the job's private directory first, so a user's own file is never
    touched; the engine then writes the resolved config into the run directory itself.
    """

    def __init__(
        self,
        on_event: Callable[[p.Event], None],
        on_note: Callable[[str], None],
        on_exit: Callable[[Exit], None],
        *,
        on_connect: Callable[[], None] | None = None,
        force_tcp: bool = False,
        command: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.on_exit = on_exit
        self.folder = private_dir()
        self.link = EngineLink(
            on_event, on_note, on_connect=on_connect, folder=self.folder, force_tcp=force_tcp
        )
        # what to run for the engine's arguments; a benchmark swaps in a stand-in engine
        self.command = command or (lambda args: engine_command("engine.train", *args))
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit: Exit | None = None
        self.left = False  # the user left it training headless: no longer ours
        self._watch: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exit is None and not self.left

    async def start(self, config: Config, *, resume: bool = False) -> None:
        path = save(config, self.folder / "config.toml")
        address = await self.link.open()
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
        self._watch = asyncio.create_task(self._wait())

    def send(self, command: p.Command) -> bool:
        return self.running and self.link.send(command)

    async def _wait(self) -> None:
        assert self.proc is not None
        while (code := self.proc.poll()) is None:
            await asyncio.sleep(POLL_S)
        await self.link.drained(2.0)  # what the engine said last is still on the wire
        try:
            text = (self.folder / "stderr.log").read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            text = ""
        self.exit = Exit.read(code, tail_lines(text))
        await self.link.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.on_exit(self.exit)

    async def stop(self, timeout: float = 60.0) -> Exit | None:
        """Ask for a checkpoint and an end; SIGTERM (which also checkpoints), then SIGKILL."""
        if not self.running or self._watch is None:
            return self.exit
        if not self.link.send(p.Stop()):
            self._signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._watch), timeout)
                return self.exit
            self._signal(sig)
            timeout = 10.0
        await self._watch
        return self.exit

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def leave(self) -> None:
        """Hang up without stopping it: the engine notices and carries on headless."""
        self.left = True
        if self._watch is not None:
            self._watch.cancel()
        await self.link.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


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
    return exit.describe() + (f": {exit.stderr[-1]}" if exit.stderr else "")


class ChatServer:
    """`python -m engine.generate SOURCE --serve`: requests in on stdin, replies out on stdout.

    Replies (`ready`, `token`, `end`, `error`) go to `on_reply` as typed ChatReply messages; a line that is not a
    JSON object with a `type` goes to `on_note`. `on_exit` hears when the process ends.
    """

    def __init__(
        self,
        on_reply: Callable[[p.ChatReply], None],
        on_note: Callable[[str], None],
        on_exit: Callable[[Exit], None],
    ) -> None:
        self.on_reply = on_reply
        self.on_note = on_note
        self.on_exit = on_exit
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=TAIL_LINES)
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False

    async def start(self, source: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *engine_command("engine.generate", source, "--serve"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=engine_env(),
        )
        readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]
        self._tasks = [*readers, asyncio.create_task(self._wait(readers))]

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
        for task in self._tasks:
            task.cancel()

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        lines = framing.LineBuffer()
        while data := await self.proc.stdout.read(1 << 16):
            for line in lines.feed(data):
                try:
                    reply = p.parse_chat_reply(line)
                except framing.ProtocolError:
                    self.on_note(f"ignored a line from the chat server: {line[:80]!r}")
                else:
                    self.on_reply(reply)

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)

    async def _wait(self, readers: list[asyncio.Task[None]]) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):  # the last lines it wrote
            await asyncio.wait_for(asyncio.gather(*readers), 2.0)
        if not self.closing:
            self.on_exit(Exit.read(code, list(self._stderr)))
