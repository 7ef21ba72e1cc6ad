"""The studio's end of the engine socket: a private address that one engine reports to.

Each engine job gets its own link. The link listens on a Unix socket inside a fresh directory
only this user can enter (mode 0700), so no other user can connect or even see it. Where Unix
sockets are missing (or the path would be too long for one), it listens on 127.0.0.1 instead,
where anyone on the machine could connect; there the random token handed to the engine through
its environment is what tells our engine from a stranger. The token is checked either way: the
engine's first line must be a `hello` carrying it, or the connection is closed.

Lines are cut with engine.contract.framing's LineBuffer and decoded with engine.contract.events.decode. A line
that is too long, not JSON, or not an event is dropped and reported through `on_note`; it never
closes the connection, so one bad message costs one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.contract import events as p
from engine.contract import framing

SOCKET_NAME = "engine.sock"
UNIX_PATH_MAX = 100  # sun_path is 104-108 bytes depending on the system; stay below all
READ_CHUNK = 1 << 16


def private_dir() -> Path:
    """A new directory only this user can enter: mkdtemp creates it with mode 0700."""
    return Path(tempfile.mkdtemp(prefix="gpt-studio-"))


class EngineLink:
    """Listens for one engine; hands its events to `on_event` and sends it commands.

    `on_note(text)` hears what went wrong on the wire (dropped lines, a refused connection);
    `on_connect()` and `on_disconnect()` when the engine arrives and goes.
    """

    def __init__(
        self,
        on_event: Callable[[p.Event], None],
        on_note: Callable[[str], None],
        *,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        folder: Path | None = None,
        force_tcp: bool = False,
    ) -> None:
        self.on_event = on_event
        self.on_note = on_note
        self.on_connect = on_connect or (lambda: None)
        self.on_disconnect = on_disconnect or (lambda: None)
        self.folder = folder
        self.force_tcp = force_tcp
        self.token = secrets.token_hex(16)
        self.address = ""
        self.dropped = 0  # lines refused: over-long, not JSON, or not an event
        self._owns_folder = False
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._gone = asyncio.Event()  # the engine's connection has ended (or never came)

    @property
    def env(self) -> dict[str, str]:
        """What the engine's environment needs to be let in."""
        return {framing.TOKEN_ENV: self.token}

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def open(self) -> str:
        """Start listening; returns the address for the engine's `--report-to`."""
        if self.folder is None:
            self.folder, self._owns_folder = private_dir(), True
        path = self.folder / SOCKET_NAME
        unix = hasattr(socket, "AF_UNIX") and not self.force_tcp
        if unix and len(str(path)) <= UNIX_PATH_MAX:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
            self.address = f"unix:{path}"
        else:
            self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"tcp:127.0.0.1:{port}"
        return self.address

    def send(self, command: p.Command) -> bool:
        """Queue a command for the engine; False when no engine is connected to hear it."""
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(p.encode(command))
        return True

    async def drained(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until the engine's connection has ended and its last line
        is read: called once it has exited. Its connection may not even have been accepted yet
        on a busy machine, so this waits whether or not it is connected."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._gone.wait(), timeout)

    async def close(self) -> None:
        """Hang up and stop listening. A running engine carries on headless."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._owns_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- one connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self.on_note("refused a second engine connection: this link already has one")
            writer.close()
            return
        lines = framing.LineBuffer()
        greeted = False
        try:
            while data := await reader.read(READ_CHUNK):
                dropped = lines.dropped
                for line in lines.feed(data):
                    if not greeted:
                        if not self._welcome(line):
                            writer.close()
                            return
                        greeted = True
                        self._writer = writer
                        self.on_connect()
                        continue
                    self._take(line)
                if lines.dropped > dropped:
                    self.dropped += lines.dropped - dropped
                    self.on_note(
                        f"dropped {lines.dropped - dropped} message(s) from the engine: longer "
                        f"than the {framing.MAX_LINE_BYTES}-byte limit"
                    )
        except (ConnectionError, OSError):
            pass  # the engine died mid-line; its exit code says why
        finally:
            if self._writer is writer:
                self._writer = None
                with contextlib.suppress(Exception):
                    writer.close()
                self._gone.set()
                self.on_disconnect()

    def _welcome(self, line: bytes) -> bool:
        """The first line must be a hello with our token; anything else is a stranger."""
        try:
            hello = p.decode_hello(line)
        except framing.ProtocolError as err:
            self.on_note(f"refused a connection that did not start with hello: {err}")
            return False
        if not hmac.compare_digest(hello.token.encode(), self.token.encode()):
            self.on_note(f"refused a connection with a wrong token (pid {hello.pid})")
            return False
        return True

    def _take(self, line: bytes) -> None:
        try:
            event = p.decode(line)
        except framing.ProtocolError as err:
            self.dropped += 1
            self.on_note(f"dropped a message from the engine: {err}")
            return
        self.on_event(event)
