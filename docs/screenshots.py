"""Regenerate the studio screenshots in docs/: `python docs/screenshots.py` (about two minutes).

Drives the real app headless, so the pictures show what a user sees, not a mock-up: the Train,
Chat and Runs pictures come from a real Tiny run trained for a few hundred steps on the
built-in prose, in a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # the engine subprocesses run this checkout

from engine.contract.config import load_preset  # noqa: E402
from studio.app import StudioApp  # noqa: E402
from studio.panes.chat import LIVE, ChatPane  # noqa: E402
from studio.panes.dataset import DatasetPane  # noqa: E402
from studio.panes.runs import RunsPane  # noqa: E402
from studio.panes.train import IDLE, TrainPane  # noqa: E402

SIZE = (130, 40)
STEPS = 600


async def until(pilot, predicate, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the studio did not get there in time")
        await pilot.pause(0.2)


async def config_pane() -> None:
    app = StudioApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")  # the mini preset: GPT-2 small's shape
        app.query_one("#field-model-n_layer").editor.focus()
        await pilot.pause()
        app.save_screenshot("config-pane.svg", path=str(DOCS))


async def dataset_pane() -> None:
    app = StudioApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+f")
        data = app.query_one(DatasetPane)
        await until(pilot, lambda: data.facts is not None)
        await pilot.pause(0.5)
        app.save_screenshot("dataset-pane.svg", path=str(DOCS))


async def a_run(folder: Path) -> None:
    """Train Tiny for a while: the Train pane mid-run, a live chat, then the Runs pane."""
    config = load_preset("tiny")
    config.out_dir = str(folder / "runs")
    config.train.max_steps = STEPS
    config.train.eval_interval = config.train.sample_interval = 100
    config.train.warmup_steps = 50
    app = StudioApp(config, "preset:tiny")
    async with app.run_test(size=SIZE) as pilot:
        train = app.query_one(TrainPane)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step >= STEPS - 100 and train.samples)
        await pilot.pause(1.0)  # the charts' next redraw
        app.save_screenshot("train-pane.svg", path=str(DOCS))

        await pilot.press("ctrl+l")
        chat = app.query_one(ChatPane)
        chat.use(LIVE)
        for prompt in ("The ", "A function "):
            await pilot.press(*prompt, "enter")
            await until(pilot, lambda: chat.history and chat.history[-1].done)
        await pilot.pause(0.5)
        app.save_screenshot("chat-pane.svg", path=str(DOCS))

        await until(pilot, lambda: train.state == IDLE)
        await pilot.press("ctrl+r")
        runs = app.query_one(RunsPane)
        await until(pilot, lambda: runs.runs)
        await pilot.press("enter")
        await pilot.pause(1.5)
        app.save_screenshot("runs-pane.svg", path=str(DOCS))


async def main() -> None:
    await config_pane()
    await dataset_pane()
    with tempfile.TemporaryDirectory(prefix="gpt-studio-shots-") as folder:
        await a_run(Path(folder))


if __name__ == "__main__":
    asyncio.run(main())
