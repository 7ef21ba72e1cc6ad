"""The studio's end of the engine socket, and reading a metrics.jsonl that is still growing."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from engine.contract import events as p
from engine.contract import framing
from engine.contract.rundir import MetricsTail
from studio.link import EngineLink


class Heard:
    def __init__(self) -> None:
        self.events: list[p.Event] = []
        self.notes: list[str] = []


def make_link(heard: Heard, **kw) -> EngineLink:
    return EngineLink(heard.events.append, heard.notes.append, **kw)


async def dial(link: EngineLink, token: str | None = None):
    kind, where = framing.parse_address(link.address)
    if kind == "unix":
        reader, writer = await asyncio.open_unix_connection(where)
    else:
        reader, writer = await asyncio.open_connection(*where)
    writer.write(p.encode(p.Hello(token=link.token if token is None else token, pid=1)))
    await writer.drain()
    return reader, writer


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_link_listens_in_a_private_directory_and_carries_events_and_commands():
    async def run() -> None:
        heard = Heard()
        link = make_link(heard)
        address = await link.open()
        folder = link.folder
        assert address.startswith("unix:") and folder is not None
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # no one else may even look
        reader, writer = await dial(link)
        writer.write(p.encode(p.Step(step=3, loss=2.5, lr=1e-3, grad_norm=1.0, tokens_per_s=9.0,
                                     step_ms=1.0, mfu=None, mem_gb=0.1)))  # fmt: skip
        await until(lambda: heard.events)
        assert isinstance(heard.events[0], p.Step) and heard.events[0].loss == 2.5
        assert link.connected and link.send(p.Pause())
        assert p.decode_command(await reader.readline()) == p.Pause()
        writer.close()
        await until(lambda: not link.connected)
        await link.close()
        assert not folder.exists()

    asyncio.run(run())


def test_malformed_over_long_and_unknown_lines_are_dropped_and_noted_never_fatal():
    async def run() -> None:
        heard = Heard()
        link = make_link(heard)
        await link.open()
        _reader, writer = await dial(link)
        writer.write(b"this is not json\n")
        writer.write(b'{"type": "launch"}\n')
        writer.write(b'{"type": "eval", "step": "ten", "val_loss": 1.0, "ppl": 2.0}\n')
        writer.write(b"[1, 2]\n")
        writer.write(
            b'{"type": "log", "message": "' + b"x" * (framing.MAX_LINE_BYTES + 1) + b'"}\n'
        )
        writer.write(p.encode(p.Log("still here")))
        await until(lambda: heard.events)
        assert [e.message for e in heard.events] == ["still here"]
        assert link.dropped == 5 and len(heard.notes) == 5
        assert "not JSON" in heard.notes[0] and "unknown message type 'launch'" in heard.notes[1]
        assert "bad 'eval' message: step" in heard.notes[2]
        assert "byte limit" in heard.notes[4]
        assert link.connected
        writer.close()
        await link.close()

    asyncio.run(run())


def test_over_tcp_an_engine_without_the_token_is_disconnected():
    async def run() -> None:
        heard = Heard()
        link = make_link(heard, force_tcp=True)
        address = await link.open()
        assert address.startswith("tcp:127.0.0.1:")
        reader, writer = await dial(link, token="guess")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # hung up on
        assert not link.connected and "wrong token" in heard.notes[-1]
        writer.close()

        _, writer = await dial(link)  # the engine we started, with the token we gave it
        writer.write(p.encode(p.Log("hello over tcp")))
        await until(lambda: heard.events)
        assert link.connected and heard.events[0].message == "hello over tcp"
        writer.close()
        await link.close()

    asyncio.run(run())


def test_a_first_line_that_is_not_hello_is_refused():
    async def run() -> None:
        heard = Heard()
        link = make_link(heard)
        await link.open()
        reader, writer = await asyncio.open_unix_connection(framing.parse_address(link.address)[1])
        writer.write(p.encode(p.Log("no hello")))
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert not heard.events and "did not start with hello" in heard.notes[-1]
        writer.close()
        await link.close()

    asyncio.run(run())


def test_metrics_tail_keeps_a_torn_last_line_until_it_is_complete(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []  # not written yet
    first = p.encode(p.Eval(step=10, val_loss=2.0, ppl=7.4))
    second = p.encode(p.Eval(step=20, val_loss=1.5, ppl=4.5))
    path.write_bytes(first + second[:9])  # the engine is half-way through a line
    assert [e.step for e in tail.read_new()] == [10]
    with open(path, "ab") as f:
        f.write(second[9:])
    assert [e.step for e in tail.read_new()] == [20]
    path.write_bytes(first)  # a new run replaced the file: read it from the start
    assert [e.step for e in tail.read_new()] == [10]
