"""A stand-in for `python -m engine.train CONFIG --report-to ADDRESS`, without torch.

It speaks the real protocol (engine.contract.events) to the studio, so tests and the benchmark can
drive the studio's socket end hard — junk lines, a crash, a hundred events a second — in a
fraction of the time a real run takes. FAKE_ENGINE_MODE picks what it does:

- `junk`: malformed, over-long and unknown lines between good events, then runs like `steady`
- `crash`: a start and a few steps, a traceback on stderr, exit code 3
- `steady`: a start, then FAKE_ENGINE_RATE step events a second (an eval every tenth) until
  told to stop (checkpoint, done, exit 0); pause and resume are obeyed. If the studio goes
  away it carries on headless, appending to FAKE_ENGINE_LOG (one line per step) if set.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.contract import events as p
from engine.contract import framing


def connect(address: str) -> socket.socket:
    kind, where = framing.parse_address(address)
    sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
    sock.connect(where)
    sock.sendall(p.encode(p.Hello(token=os.environ.get(framing.TOKEN_ENV, ""), pid=os.getpid())))
    sock.setblocking(False)
    return sock


def main() -> int:
    address = sys.argv[sys.argv.index("--report-to") + 1]
    mode = os.environ.get("FAKE_ENGINE_MODE", "steady")
    rate = float(os.environ.get("FAKE_ENGINE_RATE", "50"))
    log = os.environ.get("FAKE_ENGINE_LOG")
    sock = connect(address)
    lines = framing.LineBuffer()
    connected = True

    def send(message: p.Message | bytes) -> None:
        nonlocal connected
        if not connected:
            return
        data = message if isinstance(message, bytes) else p.encode(message)
        try:
            sock.setblocking(True)
            sock.sendall(data)
            sock.setblocking(False)
        except OSError:
            connected = False

    def commands() -> list[p.Command]:
        nonlocal connected
        got = []
        while connected:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                connected = False
                break
            got += [p.decode_command(line) for line in lines.feed(data)]
        return got

    send(p.Start(run="fake", config={}, params=1000, device="cpu", dtype="float32",
                 max_steps=1_000_000, tokens_per_step=256))  # fmt: skip
    if mode == "junk":
        send(b"this is not json\n")
        send(b'{"type": "launch", "step": 1}\n')
        send(b'{"type": "step", "step": "one"}\n')
        send(b"x" * (framing.MAX_LINE_BYTES + 10) + b"\n")
    step, paused = 0, False
    while True:
        for command in commands():
            if isinstance(command, p.Pause):
                paused = True
                send(p.Paused(step=step))
            elif isinstance(command, p.Resume):
                paused = False
                send(p.Resumed(step=step))
            elif isinstance(command, p.Stop):
                send(p.Checkpoint(step=step, path=f"fake/step_{step:08d}.pt"))
                send(p.Done(step=step, reason="stopped"))
                return 0
        if paused:
            time.sleep(0.02)
            continue
        step += 1
        send(p.Step(step=step, loss=4.0 / (1 + step / 100), lr=1e-3, grad_norm=1.0,
                    tokens_per_s=25_000.0, step_ms=10.0, mfu=None, mem_gb=0.3, tokens=256 * step,
                    eta_s=100.0))  # fmt: skip
        if step % 10 == 0:
            send(p.Eval(step=step, val_loss=4.2 / (1 + step / 100), ppl=10.0))
        if log and not connected:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"headless step {step}\n")
        if mode == "crash" and step == 5:
            print("Traceback (most recent call last):", file=sys.stderr)
            print("RuntimeError: the fake engine fell over", file=sys.stderr, flush=True)
            return 3
        time.sleep(1 / rate)


if __name__ == "__main__":
    raise SystemExit(main())
