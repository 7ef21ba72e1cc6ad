import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import events as p
from engine.contract import framing


def test_every_event_round_trips_through_ndjson():
    events = [
        p.Start(run="r", config={"model": {"n_layer": 2}}, params=10, device="cpu",
                dtype="float32", max_steps=5, tokens_per_step=64),
        p.Step(step=1, loss=2.5, lr=1e-3, grad_norm=0.7, tokens_per_s=1e4, step_ms=12.0,
               mfu=None, mem_gb=0.3, tokens=64, eta_s=3.0),
        p.Eval(step=1, val_loss=2.4, ppl=11.0),
        p.Sample(step=1, prompt="Hi", text=" there ünïcødé 🙂"),
        p.Checkpoint(step=1, path="runs/r/checkpoints/step_00000001.pt", best=True, val_loss=2.4),
        p.Done(step=1, reason="finished", elapsed_s=1.5),
        p.Error(message="boom", step=1),
        p.Log(message="hello"),
        p.Progress(task="prepare", done=3, total=10, unit="MB"),
        p.Paused(step=4),
        p.Resumed(step=4),
        p.DataReady(out_dir="data/ab12", train_tokens=900, val_tokens=100, documents=3),
        p.Adjusted(key="train.warmup_steps", value=700, used=30, reason="longer than the run"),
        p.Error(message="x = 1 must be 2", origin="override '--x=1'", key="x", value=1,
                allowed="must be 2"),
    ]  # fmt: skip
    assert {e.type for e in events} == set(p.EVENTS)
    for event in events:
        line = p.encode(event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert p.decode(line) == event


def test_step_records_carry_the_fields_the_studio_charts():
    record = json.loads(p.Step(step=3, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=5.0,
                               step_ms=2.0, mfu=0.4, mem_gb=1.0).to_json())  # fmt: skip
    for key in ("type", "time", "step", "loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mfu", "mem_gb"):  # fmt: skip
        assert key in record
    assert record["type"] == "step"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "nope"}', "unknown message type 'nope'"),
        (b'{"type": "eval", "step": 1}', "bad 'eval' message"),
        (
            b'{"type": "step", "step": "3", "loss": 1, "lr": 0, "grad_norm": 0, '
            b'"tokens_per_s": 0, "step_ms": 0, "mfu": null, "mem_gb": 0}',
            "step = '3'",
        ),
        (b'{"type": "eval", "step": true, "val_loss": 1.0, "ppl": 2.0}', "step = True"),
        (b"\xff\xfe", "not JSON"),
        (b"{" + b" " * framing.MAX_LINE_BYTES + b"}", "exceeds"),
    ],
)
def test_malformed_lines_raise_protocol_error(line, message):
    with pytest.raises(framing.ProtocolError, match=message):
        p.decode(line)


def test_unknown_extra_fields_are_ignored_for_forward_compatibility():
    event = p.decode(b'{"type": "eval", "step": 2, "val_loss": 1.5, "ppl": 4.5, "new": 1}')
    assert event == p.Eval(step=2, val_loss=1.5, ppl=4.5, time=event.time)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(blob):
    with contextlib.suppress(framing.ProtocolError):
        p.decode(blob)


def test_commands_round_trip_and_events_are_not_commands():
    commands = [
        p.Pause(), p.Resume(), p.Stop(), p.Save(),
        p.SampleRequest(prompt="Once", max_tokens=20, temperature=0.5, top_k=10, top_p=0.9, id="7"),
    ]  # fmt: skip
    assert {c.type for c in commands} == set(p.COMMANDS)
    for command in commands:
        assert p.decode_command(p.encode(command)) == command
    with pytest.raises(framing.ProtocolError, match="unknown message type 'eval'"):
        p.decode_command(p.encode(p.Eval(step=1, val_loss=1.0, ppl=2.7)))
    with pytest.raises(framing.ProtocolError, match="prompt"):
        p.decode_command(b'{"type": "sample", "prompt": 5}')


def test_hello_carries_the_token():
    hello = p.decode_hello(p.encode(p.Hello(token="abc", pid=12)))
    assert hello.token == "abc" and hello.pid == 12


def test_line_buffer_reassembles_lines_and_drops_only_the_oversized_one():
    buf = framing.LineBuffer(limit=10)
    assert buf.feed(b"abc\nde") == [b"abc"]
    assert buf.feed(b"f\n") == [b"def"]
    assert buf.feed(b"x" * 25) == []  # too long already: dropped, not buffered
    assert buf.feed(b"yyy\nok\n") == [b"ok"]
    assert buf.feed(b"0123456789AB\nfine\n") == [b"fine"]
    assert buf.dropped == 2


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("unix:/tmp/s.sock", ("unix", "/tmp/s.sock")),
        ("tcp:127.0.0.1:9000", ("tcp", ("127.0.0.1", 9000))),
    ],
)
def test_addresses_parse(address, parsed):
    assert framing.parse_address(address) == parsed


def test_a_bad_address_is_a_clear_error():
    with pytest.raises(
        framing.ProtocolError, match=r"must be unix:/path/to/socket or tcp:127\.0\.0\.1:PORT"
    ):
        framing.parse_address("localhost:80")
