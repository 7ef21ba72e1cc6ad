"""The engine's end of the studio socket, driven by a stand-in studio made of a plain socket."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import tiny_config

from engine import metrics
from engine.contract import config, framing
from engine.contract import events as p

ROOT = Path(__file__).resolve().parent.parent


class FakeStudio:
    """Listens like the studio; collects the engine's lines and sends it commands."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "s.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(1)
        self.server.settimeout(60)
        self.conn: socket.socket | None = None
        self.lines = framing.LineBuffer()
        self.messages: list[dict] = []

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def accept(self) -> None:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(0.2)

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def until(self, predicate, timeout: float = 60.0) -> dict:
        """Read until a message satisfies `predicate`; return it."""
        deadline = time.time() + timeout
        seen = len(self.messages)
        while time.time() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            try:
                data = self.conn.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                break
            self.messages += [json.loads(line) for line in self.lines.feed(data)]
        raise AssertionError(f"no such message; last: {self.messages[-3:]}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def start_engine(cfg: config.Config, tmp_path: Path, address: str, **env: str):
    path = config.save(cfg, tmp_path / "run.toml")
    return subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(path), "--report-to", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip


def of(kind: str, **fields):
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


@pytest.fixture
def studio(tmp_path):
    s = FakeStudio(tmp_path)
    yield s
    s.close()


@pytest.mark.slow
def test_the_studio_drives_a_run_pause_sample_save_resume_stop(tmp_path, studio):
    cfg = tiny_config(tmp_path, train__max_steps=100000, checkpoint__interval=100000)
    engine = start_engine(cfg, tmp_path, studio.address, GPT_STUDIO_TOKEN="secret")
    try:
        studio.accept()
        hello = studio.until(of("hello"))
        assert hello["token"] == "secret" and hello["pid"] == engine.pid
        studio.until(of("start"))
        studio.until(of("step"))

        studio.send(p.encode(p.Pause()))
        paused = studio.until(of("paused"))
        studio.send(b"this is not json\n" + b'{"type": "launch"}\n')  # survived, ignored
        studio.send(p.encode(p.SampleRequest(prompt="the ", max_tokens=12, id="q1")))
        sample = studio.until(of("sample", id="q1"))
        assert sample["prompt"] == "the " and isinstance(sample["text"], str)
        studio.send(p.encode(p.Save()))
        saved = studio.until(of("checkpoint"))
        at = paused["step"]
        assert saved["step"] == sample["step"] == at
        # a later round trip: the run still holds, with no step after the paused one
        studio.send(p.encode(p.SampleRequest(prompt="a ", max_tokens=4, id="q2")))
        assert studio.until(of("sample", id="q2"))["step"] == at
        assert max(m["step"] for m in studio.messages if m["type"] == "step") <= at

        studio.send(p.encode(p.Resume()))
        studio.until(of("resumed", step=at))
        studio.until(lambda m: m["type"] == "step" and m["step"] > at)

        studio.send(p.encode(p.Stop()))
        done = studio.until(of("done"))
        assert done["reason"] == "stopped"
        _out, err = engine.communicate(timeout=60)
        assert engine.returncode == 0, err
        assert "ignored a message from the studio" in err
    finally:
        engine.kill()
    records = metrics.read_events(cfg.run_dir / "metrics.jsonl")
    assert [type(e) for e in records][-2:] == [p.Checkpoint, p.Done]  # saved before ending


@pytest.mark.slow
def test_training_goes_on_headless_when_the_studio_goes_away(tmp_path, studio):
    cfg = tiny_config(tmp_path, train__max_steps=60)
    engine = start_engine(cfg, tmp_path, studio.address)
    try:
        studio.accept()
        studio.until(of("step"))
        studio.close()  # the studio quits mid-run
        _out, err = engine.communicate(timeout=120)
    finally:
        engine.kill()
    assert engine.returncode == 0, err
    assert "the studio went away; training continues headless" in err
    done = [e for e in metrics.read_events(cfg.run_dir / "metrics.jsonl") if isinstance(e, p.Done)]
    assert done and done[-1].step == 60


def test_an_address_nobody_listens_on_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=2)
    engine = start_engine(cfg, tmp_path, f"unix:{tmp_path / 'nobody.sock'}")
    _out, err = engine.communicate(timeout=60)
    assert engine.returncode == 2
    assert err.startswith("error: --report-to unix:") and "cannot connect" in err
    assert not cfg.run_dir.exists()
