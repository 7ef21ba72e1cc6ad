"""The engine's end of the studio's sockets: the studio that started the run, and any other.

`--report-to ADDRESS` (StudioLink): the studio that started the run listens and the engine
dials it. Events go out through a queue and a sender thread, so a slow or frozen studio never
slows a step; commands come in on a reader thread and wait in a mailbox the training loop empties
between steps. When the studio goes away the link falls silent and training carries on headless:
metrics.jsonl is written either way.

The control endpoint (ControlServer): any studio of the same user may attach to a run later,
one it left training or one started headless on a server. Rank 0 listens on a Unix socket
inside a fresh folder only this user can enter (mode 0700), so no other user can connect or even
see it; the address goes into RUN_DIR/control.json (mode 0600, engine.contract.rundir's
ControlRecord). Where Unix sockets are missing it listens on 127.0.0.1, where anyone on the
machine could connect; there a random token, recorded only in that 0600 file, is what a client's
first line (a `hello`) must carry. A client first receives the run's history (metrics.jsonl as
it was when the endpoint opened, then every event since), then live events, so a studio
attaching late draws the whole run. Several may watch at once; commands from any are obeyed in
the order they arrive (Commands merges them with --report-to's). Sending never blocks the
training loop: each client has its own queue and thread, and one that reads too slowly to keep
up is let go rather than waited for.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import queue
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine.contract import events as p
from engine.contract import framing
from engine.contract.errors import UsageError
from engine.contract.rundir import ControlRecord, RunDir

CONNECT_TIMEOUT_S = 10.0
OUTBOX = 10_000  # events held for a studio that reads slowly; beyond that they are dropped
SOCKET_NAME = "control.sock"
UNIX_PATH_MAX = 100  # sun_path is 104-108 bytes depending on the system; stay below all
CLIENT_QUEUE = 20_000  # lines held for one slow attached studio before it is let go
HISTORY_MAX = 500_000  # lines of history kept for late watchers
WAIT_SLICE_S = 0.05  # a paused run with two command sources looks at both this often


class Inbox(queue.Queue):
    """Commands as the reader threads received them, for the loop to take between steps."""

    def poll(self) -> list[p.Command]:
        """Every command received since the last call, in order."""
        commands = []
        while True:
            try:
                commands.append(self.get_nowait())
            except queue.Empty:
                return commands

    def wait(self, timeout: float) -> p.Command | None:
        """The next command, waiting at most `timeout` seconds (a paused run waits here)."""
        try:
            return self.get(timeout=timeout)
        except queue.Empty:
            return None


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
        self._inbox = Inbox()
        self._lost = threading.Event()
        self.dropped = 0  # events not sent: the outbox was full
        self.refused = 0  # lines from the studio that were not commands
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
                self._take(line)

    def _take(self, line: bytes) -> None:
        """Decode one line into the mailbox. Any failure drops the line with a logged warning
        and the reader lives on: a dead reader would leave a paused run waiting forever."""
        try:
            command = p.decode_command(line)
        except Exception as err:  # ProtocolError by contract; anything else is still one line
            self.refused += 1
            text = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            print(f"warning: ignored a message from the studio: {text}", file=sys.stderr)
            return
        self._inbox.put(command)

    def poll(self) -> list[p.Command]:
        return self._inbox.poll()

    def wait(self, timeout: float) -> p.Command | None:
        return self._inbox.wait(timeout)

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


class _Client:
    """One attached studio: a queue of lines to send and the threads that serve it."""

    def __init__(self, sock: socket.socket, history: list[bytes]) -> None:
        self.sock = sock
        self.outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=CLIENT_QUEUE + len(history))
        for line in history:
            self.outbox.put_nowait(line)
        self.gone = threading.Event()

    def offer(self, line: bytes) -> None:
        try:
            self.outbox.put_nowait(line)
        except queue.Full:  # too slow to keep up: let it go rather than hold the run
            self.hang_up()

    def send_loop(self) -> None:
        while (line := self.outbox.get()) is not None:
            try:
                self.sock.sendall(line)
            except OSError:
                break
        self.hang_up()

    def hang_up(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(queue.Full):
                self.outbox.put_nowait(None)


class ControlServer:
    """The endpoint: a metrics sink (`write`) that is also a source of commands (`poll`)."""

    def __init__(self, run_dir: str | Path, *, force_tcp: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.folder = Path(tempfile.mkdtemp(prefix="gpt-run-"))  # mode 0700
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._history = self._read_history()
        self._inbox = Inbox()
        self._closed = False
        path = self.folder / SOCKET_NAME
        unix = hasattr(socket, "AF_UNIX") and not force_tcp and len(str(path)) <= UNIX_PATH_MAX
        if unix:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(path))
            self.token, self.address = "", f"unix:{path}"
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            port = self._listener.getsockname()[1]
            self.token, self.address = secrets.token_hex(16), f"tcp:127.0.0.1:{port}"
        self._listener.listen(8)
        self.record = ControlRecord(self.address, self.token, os.getpid(), socket.gethostname())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record.save(RunDir(self.run_dir).control)
        threading.Thread(target=self._accept_loop, name="control-accept", daemon=True).start()

    def _read_history(self) -> list[bytes]:
        """The complete lines of metrics.jsonl so far: what a late watcher needs first."""
        try:
            data = RunDir(self.run_dir).metrics.read_bytes()
        except OSError:
            return []
        lines = data.split(b"\n")[:-1]  # a last line without its newline is not whole
        return [line + b"\n" for line in lines if line.strip()][-HISTORY_MAX:]

    @property
    def connected(self) -> bool:
        """Whether any studio is attached now."""
        with self._lock:
            return any(not c.gone.is_set() for c in self._clients)

    @property
    def watchers(self) -> int:
        with self._lock:
            return sum(not c.gone.is_set() for c in self._clients)

    # --- out ------------------------------------------------------------------------------------

    def write(self, event: p.Event) -> None:
        line = p.encode(event)
        with self._lock:
            self._history.append(line)
            if len(self._history) > HISTORY_MAX:
                del self._history[: len(self._history) - HISTORY_MAX]
            self._clients = [c for c in self._clients if not c.gone.is_set()]
            for client in self._clients:
                client.offer(line)

    # --- in -------------------------------------------------------------------------------------

    def poll(self) -> list[p.Command]:
        """Every command received since the last call, from any client, in order."""
        return self._inbox.poll()

    def wait(self, timeout: float) -> p.Command | None:
        return self._inbox.wait(timeout)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        lines = framing.LineBuffer()
        client: _Client | None = None
        try:
            while data := sock.recv(1 << 16):
                for line in lines.feed(data):
                    if client is None:
                        client = self._welcome(sock, line)
                        if client is None:
                            return
                        continue
                    try:
                        self._inbox.put(p.decode_command(line))
                    except framing.ProtocolError as err:
                        print(f"warning: ignored a message from a studio: {err}", file=sys.stderr)
        except OSError:
            pass
        finally:
            if client is not None:
                client.hang_up()
            with contextlib.suppress(OSError):
                sock.close()

    def _welcome(self, sock: socket.socket, line: bytes) -> _Client | None:
        """A hello with our token (any, on a Unix socket) lets a client in; else it is shut."""
        try:
            hello = p.decode_hello(line)
        except framing.ProtocolError:
            return None
        if self.token and not hmac.compare_digest(hello.token.encode(), self.token.encode()):
            return None
        with self._lock:
            client = _Client(sock, list(self._history))
            self._clients.append(client)
        threading.Thread(target=client.send_loop, name="control-send", daemon=True).start()
        return client

    # --- end ------------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Send watchers what is queued (up to `timeout` seconds), then stop listening."""
        self._closed = True
        with contextlib.suppress(OSError):
            RunDir(self.run_dir).control.unlink()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(queue.Full):
                client.outbox.put(None, timeout=timeout)
        for client in clients:  # the senders drain their queues, then hang up
            client.gone.wait(timeout)
            client.hang_up()
        shutil.rmtree(self.folder, ignore_errors=True)


def open_control(run_dir: str | Path) -> ControlServer | None:
    """The run's endpoint, or None (with a warning) where it cannot listen: training goes on."""
    try:
        return ControlServer(run_dir)
    except OSError as err:
        print(f"warning: no control endpoint for this run ({err})", file=sys.stderr)
        return None


class Commands:
    """Where a run's commands come from: the studio that started it (`--report-to`) and the
    control endpoint, heard as one source; `connected` while any studio is there to command."""

    def __init__(self, *sources: StudioLink | ControlServer | None) -> None:
        self.sources = [s for s in sources if s is not None]
        self._pending: list[p.Command] = []

    @property
    def connected(self) -> bool:
        return any(s.connected for s in self.sources)

    def poll(self) -> list[p.Command]:
        commands = self._pending + [c for s in self.sources for c in s.poll()]
        self._pending = []
        return commands

    def wait(self, timeout: float) -> p.Command | None:
        """The next command from any source, waiting at most `timeout` seconds."""
        if len(self.sources) == 1 and not self._pending:
            return self.sources[0].wait(timeout)
        deadline = time.monotonic() + timeout
        while True:
            self._pending += [c for s in self.sources for c in s.poll()]
            if self._pending:
                return self._pending.pop(0)
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic())))
