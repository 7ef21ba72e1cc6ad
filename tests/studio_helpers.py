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

from studio.app import StudioApp
from studio.panes.train import TrainPane

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
