"""Every reader of our lines treats any line as data: fuzzed lines into the engine's command
reader, the studio's event reader, the run-folder scanner and `--serve`. Each drops what it
cannot use, says so in one line, and keeps reading: a good line sent after the fuzz still gets
through."""

from __future__ import annotations

import asyncio
import io
import json
import math
import socket
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.chat import ChatSession, serve
from engine.contract import events as p
from engine.contract import framing
from engine.contract.config import ModelConfig
from engine.contract.rundir import MetricsTail, list_runs
from engine.contract.sampling import Sampling
from engine.model import GPT
from engine.remote import StudioLink
from engine.tokenizer import CharTokenizer
from studio.link import EngineLink
from studio.messages import EngineNote, RunEvents

KINDS = [*p.EVENTS, *p.COMMANDS, "hello", "", "ready", "token", "end"]
SENT = {"engine": 0, "studio": 0, "scanner": 0, "serve": 0}  # lines sent, reported at the end

# Values that broke readers before: huge integers, deep nesting, NaN, lone surrogates.
NASTY = [
    b"[" * 50_000,
    b'{"type": "sample", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"type": "step", "step": 1, "loss": NaN, "lr": 1, "grad_norm": Infinity, "tokens_per_s": 1,'
    b' "step_ms": 1, "mfu": null, "mem_gb": 1}',
    b'{"type": "eval", "step": 1, "val_loss": 1e999, "ppl": -Infinity}',
    b'{"type": "sample", "prompt": "\\ud800", "id": "\\udfff"}',
    b'{"id": "\\ud800", "prompt": "hi"}',
    b'{"prompt": "hi", "seed": 99999999999999999999999}',
    b'{"prompt": "hi", "max_tokens": 1000000000000}',
    b'{"type": "sample", "prompt": "x", "max_tokens": 1000000000000}',
    b'{"type": "sample", "prompt": "x", "top_p": 0}',
    b'{"type": "done", "step": 18446744073709551617, "reason": "finished"}',
    b'{"type": "start"}',
    b"\xff\xfe\x00garbage",
    b"null",
    b"[]",
    b'"text"',
    b"{" + b'"a":{' * 5000 + b"}" * 5001,
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=4,
)
field_names = st.sampled_from(
    ["step", "loss", "prompt", "max_tokens", "seed", "id", "top_p", "top_k", "temperature",
     "val_loss", "reason", "message", "config", "time", "token", "pid", "run", "x"]
)  # fmt: skip


@st.composite
def message_like(draw) -> bytes:
    record = {"type": draw(st.sampled_from(KINDS))} if draw(st.booleans()) else {}
    record.update(draw(st.dictionaries(field_names, values, max_size=6)))
    return json.dumps(record, allow_nan=True).encode()


lines = st.one_of(
    message_like(),
    st.sampled_from(NASTY),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
    values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
)
batches = st.lists(lines, min_size=23, max_size=30)
FUZZ = settings(
    max_examples=45, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


# --- the four readers, each fed one batch -----------------------------------------------------


def feed_engine_reader(link: StudioLink, conn: socket.socket, batch: list[bytes]) -> None:
    """The engine's command reader: after the batch, a stop still arrives."""
    conn.sendall(b"".join(line + b"\n" for line in batch) + p.encode(p.Stop()))
    got = []
    deadline = time.monotonic() + 10
    while not any(isinstance(c, p.Stop) for c in got):
        assert time.monotonic() < deadline, "the engine's reader died"
        command = link.wait(0.5)
        if command is not None:
            got.append(command)
    assert link.connected
    for command in got:  # whatever got through is a command with sane values
        if isinstance(command, p.SampleRequest):
            assert command.sampling()  # within the one set of limits
    SENT["engine"] += len(batch)


class Collect:
    """Stands in for the pane an EngineLink posts to: keeps its events and notes."""

    def __init__(self, events: list, notes: list) -> None:
        self.events, self.notes = events, notes

    def post_message(self, message) -> bool:
        if isinstance(message, RunEvents):
            self.events.extend(message.events)
        elif isinstance(message, EngineNote):
            self.notes.append(message.text)
        return True


def feed_studio_reader(batch: list[bytes]) -> None:
    """The studio's event reader: the connection lives, a later event arrives, and nothing
    non-finite reaches the panes."""

    async def run() -> None:
        events, notes = [], []
        link = EngineLink(Collect(events, notes))
        await link.open()
        _, where = framing.parse_address(link.address)
        _, writer = await asyncio.open_unix_connection(where)
        writer.write(p.encode(p.Hello(token=link.token, pid=1)))
        writer.write(b"".join(line + b"\n" for line in batch))
        writer.write(p.encode(p.Log("after the fuzz")))
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 10
        while not any(isinstance(e, p.Log) and e.message == "after the fuzz" for e in events):
            assert asyncio.get_running_loop().time() < deadline, "the studio's reader died"
            await asyncio.sleep(0.005)
        assert link.connected
        for event in events:
            for value in vars(event).values():
                assert not isinstance(value, float) or math.isfinite(value)
        writer.close()
        await link.close()

    asyncio.run(run())
    SENT["studio"] += len(batch)


def feed_scanner(root: Path, batch: list[bytes]) -> None:
    """The run-folder scanner and the metrics tail: the run is listed with what it started as."""
    run = root / "r"
    run.mkdir(exist_ok=True)
    start = p.Start(run="r", config={}, params=1, device="cpu", dtype="float32", max_steps=9,
                    tokens_per_step=1)  # fmt: skip
    body = b"".join(line + b"\n" for line in batch)
    (run / "metrics.jsonl").write_bytes(p.encode(start) + body + b'{"type": "step", "st')
    runs = list_runs(root)
    assert [r.name for r in runs] == ["r"] and runs[0].max_steps == 9
    events = MetricsTail(run / "metrics.jsonl").read_new()
    assert isinstance(events[0], p.Start)
    SENT["scanner"] += len(batch)


def feed_serve(session: ChatSession, batch: list[bytes]) -> None:
    """`--serve`: one answer (end or error) per request line, and it serves the last one."""
    good = json.dumps({"id": "last", "prompt": "the", "max_tokens": 2})
    text = [line.decode("utf-8", "replace") for line in batch]
    text = [t for t in text if t.strip()]
    out = io.StringIO()
    small = Sampling(max_tokens=2, temperature=0)
    code = serve(session, small, source="x", step=0, lines=[*text, good], out=out)
    assert code == 0
    replies = [json.loads(line) for line in out.getvalue().split("\n") if line]  # NDJSON: \n only
    answered = [r for r in replies if r["type"] in ("end", "error")]
    assert len(answered) == len(text) + 1
    assert replies[-1]["type"] == "end" and replies[-1]["id"] == "last"
    SENT["serve"] += len(batch)


@pytest.fixture(scope="module")
def engine_link(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "s.sock"))
    server.listen(1)
    link = StudioLink(f"unix:{folder / 's.sock'}")
    conn, _ = server.accept()
    yield link, conn
    link.close()
    conn.close()
    server.close()


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(1)
    tok = CharTokenizer.train(["the cat sat on a mat\n"])
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=24, vocab_size=64))
    return ChatSession(model.eval(), tok)


@FUZZ
@given(batch=batches)
def test_every_reader_drops_a_bad_line_in_one_line_and_keeps_reading(
    engine_link, session, tmp_path_factory, batch
):
    feed_engine_reader(*engine_link, batch)
    feed_studio_reader(batch)
    feed_scanner(tmp_path_factory.mktemp("runs"), batch)
    with torch.no_grad():
        feed_serve(session, batch)


def test_zz_fuzz_counts(capsys):
    """Says how many lines each reader took (run with -s to see them)."""
    with capsys.disabled():
        print(f"\nfuzz lines sent (all survived): {SENT}, total {sum(SENT.values())}")
    assert all(n >= 1000 for n in SENT.values()) or sum(SENT.values()) == 0
