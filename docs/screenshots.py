"""Regenerate the studio screenshots in docs/: `python docs/screenshots.py [NAME ...]`.

NAME is one of config, dataset, compare, attach, run (all of them when none is given; `run`
takes a few minutes on two cores, the others well under one each). Drives the real app
headless, so the pictures show what a user sees, not a mock-up: the Train, Chat and Runs
pictures come from a real Tiny run trained for a few hundred steps on the built-in prose, the
comparison from two small real runs, the attach flow from a real headless engine, all in
temporary folders.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # the engine subprocesses run this checkout

from engine.contract.config import Config, load_preset, save  # noqa: E402
from engine.contract.rundir import RunDir  # noqa: E402
from studio.app import StudioApp  # noqa: E402
from studio.panes.chat import LIVE, ChatPane  # noqa: E402
from studio.panes.dataset import DatasetPane  # noqa: E402
from studio.panes.runs import RunsPane  # noqa: E402
from studio.panes.train import RunState, TrainPane  # noqa: E402

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
        await pilot.press("f7", *"max_steps", "enter")  # jump there: its help line opens
        await pilot.pause(0.5)
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
        await until(pilot, lambda: train.step >= STEPS - 100 and train.view.samples)
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

        await until(pilot, lambda: train.state is RunState.IDLE)
        await pilot.press("ctrl+r")
        runs = app.query_one(RunsPane)
        await until(pilot, lambda: runs.runs)
        await pilot.press("enter")
        await pilot.pause(1.5)
        app.save_screenshot("runs-pane.svg", path=str(DOCS))


def small(folder: Path, name: str, steps: int, **train: object) -> Config:
    """A quick real run: Tiny's recipe at a quarter of its width, on the built-in prose."""
    config = load_preset("tiny", [f"--name={name}", f"--out_dir={folder / 'runs'}"])
    config.model.n_layer, config.model.n_embd, config.model.block_size = 2, 64, 64
    config.train.max_steps, config.train.batch_size = steps, 8
    config.log.interval = 5
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def train_headless(config: Config, folder: Path) -> subprocess.Popen:
    path = save(config, folder / f"{config.name}.toml")
    return subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(path)], stdout=subprocess.DEVNULL, cwd=folder
    )


async def compare_runs(folder: Path) -> None:
    """Two real runs that differ in their learning rates, overlaid in the Runs pane."""
    runs = [small(folder, f"lr-{lr}", 150, matrix_lr=lr) for lr in (0.01, 0.04)]
    procs = [train_headless(config, folder) for config in runs]
    assert all(proc.wait() == 0 for proc in procs), "a run for the comparison failed"
    await show_comparison(runs[0])


async def show_comparison(config: Config) -> None:
    """The first two runs under `config.out_dir`, marked and compared."""
    app = StudioApp(config)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(RunsPane)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(pane.runs) == 2)
        await pilot.press("space", "down", "space", "v")
        await until(pilot, lambda: len(pane.compare.runs) == 2)
        await pilot.pause(1.0)
        app.save_screenshot("compare-runs.svg", path=str(DOCS))


async def attach_run(folder: Path) -> None:
    """A run started headless (as on a server), found in the Runs pane and attached to."""
    config = small(folder, "headless", 100_000, eval_interval=50)
    proc = train_headless(config, folder)
    try:
        while RunDir(config.run_dir).control_record() is None:
            assert proc.poll() is None, "the headless run ended before it could be attached"
            time.sleep(0.2)
        app = StudioApp(config)
        async with app.run_test(size=SIZE) as pilot:
            pane, train = app.query_one(RunsPane), app.query_one(TrainPane)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: pane.runs and pane.runs[0].attachable)
            await pilot.pause(0.5)
            app.save_screenshot("attach-runs-pane.svg", path=str(DOCS))
            await pilot.press("a")
            await until(pilot, lambda: train.state is RunState.TRAINING and train.step >= 20)
            await pilot.press("p")
            await until(pilot, lambda: train.state is RunState.PAUSED)
            await pilot.pause(1.0)
            app.save_screenshot("attach-train-pane.svg", path=str(DOCS))
            await pilot.press("x")
            await until(pilot, lambda: train.state is RunState.IDLE)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()


async def run_shots(folder: Path) -> None:
    await a_run(folder)


SHOTS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "config": lambda folder: config_pane(),
    "dataset": lambda folder: dataset_pane(),
    "compare": compare_runs,
    "attach": attach_run,
    "run": run_shots,
}


async def main(names: list[str]) -> None:
    for name in names:
        with tempfile.TemporaryDirectory(prefix="gpt-studio-shots-") as folder:
            await SHOTS[name](Path(folder))
        print(f"{name}: done", flush=True)


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(SHOTS)
    unknown = [name for name in chosen if name not in SHOTS]
    if unknown:
        print(f"error: no screenshot named {unknown[0]!r}; choose from {', '.join(SHOTS)}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    asyncio.run(main(chosen))
