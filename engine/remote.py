"""The engine's end of the studio's socket (`--report-to ADDRESS`).

Events go out through a queue and a sender thread, so a slow or frozen studio never slows a step;
commands come in on a reader thread and wait in a mailbox the training loop empties between
steps. When the studio goes away the link falls silent and training carries on headless:
metrics.jsonl is written either way.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading

from engine.contract import events as p
from engine.contract import framing
from engine.contract.errors import UsageError

CONNECT_TIMEOUT_S = 10.0
OUTBOX = 10_000  # events held for a studio that reads slowly; beyond that they are dropped


class StudioLink:
    """A metrics sink that also receives commands."""

    def __init__(self, address: str, token: str = "") -> None:
        try:
            kind, where = framing.parse_address(address)
        except framing.ProtocolError as err:
            raise UsageError(f"--report-to: {err}") from None
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self.sock.connect(where)
        except OSError as err:
            self.sock.close()
            raise UsageError(
                f"--report-to {address}: cannot connect ({err.strerror or err}); is the studio "
                "that gave this address still running? Leave --report-to out to train headless"
            ) from None
        self.sock.settimeout(None)
        self.address = address
        self._outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=OUTBOX)
        self._inbox: queue.Queue[p.Command] = queue.Queue()
        self._lost = threading.Event()
        self.dropped = 0
        self._outbox.put(p.encode(p.Hello(token=token, pid=os.getpid())))
        self._sender = threading.Thread(target=self._send_loop, name="studio-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="studio-read", daemon=True)
        self._sender.start()
        self._reader.start()

    @property
    def connected(self) -> bool:
        return not self._lost.is_set()

    # --- out ------------------------------------------------------------------------------------

    def write(self, event: p.Event) -> None:
        if self._lost.is_set():
            return
        try:
            self._outbox.put_nowait(p.encode(event))
        except queue.Full:
            self.dropped += 1

    def _send_loop(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                self._lose()
                return

    # --- in -------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        lines = framing.LineBuffer()
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._lose()
                return
            for line in lines.feed(data):
                try:
                    self._inbox.put(p.decode_command(line))
                except framing.ProtocolError as err:
                    print(f"warning: ignored a message from the studio: {err}", file=sys.stderr)

    def poll(self) -> list[p.Command]:
        """Every command received since the last call, in order."""
        commands = []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands

    def wait(self, timeout: float) -> p.Command | None:
        """The next command, waiting at most `timeout` seconds (a paused run waits here)."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    # --- end ------------------------------------------------------------------------------------

    def _lose(self) -> None:
        if not self._lost.is_set():
            self._lost.set()
            print(
                "warning: the studio went away; training continues headless and metrics.jsonl "
                "keeps every record",
                file=sys.stderr,
                flush=True,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout` seconds), then hang up."""
        if not self._lost.is_set():
            with contextlib.suppress(queue.Full):
                self._outbox.put(None, timeout=timeout)
            self._sender.join(timeout)
        self._lost.set()  # a hang-up of our own is not the studio going away
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(address: str) -> StudioLink:
    """Connect to the studio at `address`, presenting the token it put in our environment."""
    return StudioLink(address, os.environ.get(framing.TOKEN_ENV, ""))
