"""A run's control endpoint (engine.remote.ControlServer): who may connect, what a late watcher sees, and
commands from several studios at once."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from conftest import wait_until

from engine.contract import events as p
from engine.contract import framing
from engine.contract.rundir import ControlRecord, RunDir
from engine.remote import Commands, ControlServer


def dial(address: str, token: str = "") -> socket.socket:
    kind, where = framing.parse_address(address)
    sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
    sock.settimeout(10)
    sock.connect(where)
    sock.sendall(p.encode(p.Hello(token=token, pid=1)))
    return sock


def read_events(sock: socket.socket, count: int) -> list[p.Event]:
    lines, events = framing.LineBuffer(), []
    while len(events) < count:
        data = sock.recv(1 << 16)
        assert data, f"hung up after {len(events)} of {count} events"
        events += [p.decode(line) for line in lines.feed(data)]
    return events


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder whose metrics.jsonl holds two whole records and a torn one."""
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    whole = p.encode(p.Log("first")) + p.encode(p.Eval(step=10, val_loss=2.0, ppl=7.4))
    (folder / "metrics.jsonl").write_bytes(whole + p.encode(p.Log("torn"))[:12])
    return folder


def test_endpoint_is_private_and_a_late_watcher_gets_the_history_then_live_events(run_dir):
    server = ControlServer(run_dir)
    try:
        record = RunDir(run_dir).control_record()
        assert record == server.record and record.address.startswith("unix:")
        assert record.alive() and record.token == ""  # the folder is the lock, not a token
        assert stat.S_IMODE(RunDir(run_dir).control.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.folder.stat().st_mode) == 0o700  # no one else may enter
        server.write(p.Log("before anyone watched"))

        first = dial(server.address)
        got = read_events(first, 3)
        assert [type(e) for e in got] == [p.Log, p.Eval, p.Log]  # the torn line is not history
        assert got[0].message == "first" and got[2].message == "before anyone watched"
        second = dial(server.address)
        assert len(read_events(second, 3)) == 3
        wait_until(lambda: server.watchers == 2, 10, "both watchers")

        server.write(p.Log("live"))
        assert read_events(first, 1)[0].message == "live"
        assert read_events(second, 1)[0].message == "live"

        first.sendall(p.encode(p.Pause()))
        second.sendall(p.encode(p.Save()) + b"not a command\n" + p.encode(p.Resume()))
        heard: list[p.Command] = []
        wait_until(lambda: heard.extend(server.poll()) or len(heard) == 3, 10, "three commands")
        assert sorted(type(c).__name__ for c in heard) == ["Pause", "Resume", "Save"]
        first.close()
        wait_until(lambda: server.watchers == 1, 10, "the first watcher to be gone")
        assert server.connected
    finally:
        server.close()
    assert not RunDir(run_dir).control.exists() and not server.folder.exists()
    assert read_events(second, 0) == [] and second.recv(10) == b""  # hung up on at the end


def test_over_tcp_a_client_without_the_token_is_shut_out(run_dir):
    server = ControlServer(run_dir, force_tcp=True)
    try:
        assert server.address.startswith("tcp:127.0.0.1:") and len(server.token) == 32
        stranger = dial(server.address, token="guess")
        assert stranger.recv(1 << 16) == b""  # not one byte of the run
        ours = dial(server.address, token=RunDir(run_dir).control_record().token)
        assert len(read_events(ours, 2)) == 2
    finally:
        server.close()


def test_commands_from_the_launching_studio_and_the_endpoint_are_heard_as_one(run_dir):
    class Link:  # stands for the --report-to studio
        connected = False

        def __init__(self) -> None:
            self.queue = [p.Stop()]

        def poll(self) -> list[p.Command]:
            out, self.queue = self.queue, []
            return out

        def wait(self, timeout: float) -> p.Command | None:
            return self.queue.pop(0) if self.queue else None

    server = ControlServer(run_dir)
    try:
        commands = Commands(Link(), server)
        assert not commands.connected
        watcher = dial(server.address)
        read_events(watcher, 2)
        wait_until(lambda: commands.connected, 10, "the watcher")
        watcher.sendall(p.encode(p.Pause()))
        got = [commands.wait(5.0), commands.wait(5.0)]
        assert {type(c) for c in got} == {p.Stop, p.Pause}
        assert commands.wait(0.05) is None
    finally:
        server.close()


def test_a_record_of_a_process_that_is_gone_is_not_alive(run_dir):
    record = ControlRecord("unix:/nonexistent/control.sock", "", 2**22 + 7, socket.gethostname())
    record.save(RunDir(run_dir).control)
    assert RunDir(run_dir).control_record() == record and not record.alive()
    RunDir(run_dir).control.write_text("{not json", encoding="utf-8")
    assert RunDir(run_dir).control_record() is None
