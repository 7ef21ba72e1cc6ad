"""What the studio's tests share: an app that records what it tells the user, a driver that never
leaks an engine, a wait on a condition, and form entries for a run of seconds."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from test_train import corpus
from textual.pilot import Pilot

from engine.contract import events as p
from engine.contract.config import load_preset, save, to_dict
from studio.app import StudioApp
from studio.panes.train import TrainPane

T0 = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"
SIZE = (120, 40)


class RecordingApp(StudioApp):
    """The studio, noting what it tells the user."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: str = "information", **kwargs) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kwargs)


def drive(test: Callable[[RecordingApp, Pilot], Awaitable[None]], **app_kw) -> None:
    """Run `test` against a fresh studio; a training engine it left running is killed."""

    async def run() -> None:
        app = RecordingApp(**app_kw)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            try:
                await test(app, pilot)
            finally:  # a failed test must not leave its engine training headless
                job = app.train_pane.job
                if job is not None and job.running:
                    job.kill()

    asyncio.run(run())


async def until(pilot: Pilot, predicate: Callable[[], object], what: str, timeout=90.0) -> None:
    """Let the app run until `predicate` holds; the test fails naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def small_run(tmp_path: Path, **values: str) -> dict[str, str]:
    """Form entries that shrink the Tiny preset to a run of seconds on a small corpus."""
    text = corpus(tmp_path / "corpus.txt")
    return {
        "out_dir": str(tmp_path / "runs"),
        "model.n_layer": "2",
        "model.n_embd": "32",
        "model.block_size": "32",
        "data.source": str(text),
        "data.val_fraction": "0.1",
        "data.cache_dir": str(tmp_path / "cache"),
        "train.device": "cpu",
        "train.batch_size": "8",
        "train.warmup_steps": "5",
        "train.eval_interval": "20",
        "train.eval_steps": "2",
        "train.sample_interval": "20",
        "train.sample_prompts": '["the "]',
        "train.sample_tokens": "16",
        "log.interval": "5",
        **values,
    }


def log_text(app: StudioApp) -> str:
    return "\n".join(app.train_pane.view.log_lines)


def fake_engine(pane: TrainPane) -> None:
    """Train with tests/fake_engine.py: the protocol without torch, a second not ten."""
    pane.engine_command = lambda args: [sys.executable, str(FAKE_ENGINE), *args]


def finished_run(folder: Path, lr: float = 1e-3, pace: float = 0.993) -> Path:
    """A run folder as the engine leaves it after 300 steps, with fixed times and figures."""
    config = load_preset("tiny")
    config.name, config.train.max_steps, config.train.lr = folder.name, 300, lr
    folder.mkdir(parents=True)
    save(config, folder / "config.toml")
    events: list[p.Event] = [
        p.Start(run=folder.name, config=to_dict(config), params=811_200, device="cpu",
                dtype="float32", max_steps=300, tokens_per_step=8192, time=T0),
    ]  # fmt: skip
    for step in range(10, 301, 10):
        events.append(
            p.Step(step=step, loss=4.2 * pace**step + 1.3, lr=lr * min(1.0, step / 50),
                   grad_norm=1.5 * 0.996**step, tokens_per_s=41_000.0 + 40 * (step % 70),
                   step_ms=200.0, mfu=None, mem_gb=0.61, tokens=8192 * step,
                   eta_s=0.2 * (300 - step), time=T0 + step)
        )  # fmt: skip
        if step % 100 == 0:
            loss = 4.2 * pace**step + 1.4
            events.append(p.Eval(step=step, val_loss=loss, ppl=2.718**loss, time=T0 + step))
            events.append(p.Sample(step=step, prompt="The ", text="king hath said to thee,\n"
                                   "and all the world", time=T0 + step))  # fmt: skip
    events.append(p.Checkpoint(step=300, path=str(folder / "checkpoints/step_00000300.pt"),
                               best=True, val_loss=1.48, time=T0 + 300))  # fmt: skip
    events.append(p.Done(step=300, reason="finished", elapsed_s=64.0, time=T0 + 301))
    (folder / "metrics.jsonl").write_bytes(b"".join(p.encode(e) for e in events))
    return folder
