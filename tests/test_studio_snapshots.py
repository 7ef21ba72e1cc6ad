"""Every pane in a fixed state, as an SVG compared with the one committed under
tests/__snapshots__/: a change in what the studio shows fails here until a person looks at it
and accepts it (`pytest tests/test_studio_snapshots.py --snapshot-update`).

The screens are made deterministic: a fixed terminal size, a working directory of fixed content
whose paths are shown relative, UTC for the dates, a followed run of fixed events (no clock, no
random), and charts drawn before the shot rather than by their timer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from engine import protocol as p
from engine.config import load_preset, save, to_dict
from studio.app import StudioApp

SIZE = (120, 40)
T0 = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
CORPUS = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


def finished_run(folder: Path) -> Path:
    """A run folder as the engine leaves it after 300 steps, with fixed times and figures."""
    config = load_preset("tiny")
    config.name, config.train.max_steps = folder.name, 300
    folder.mkdir(parents=True)
    save(config, folder / "config.toml")
    events: list[p.Event] = [
        p.Start(run=folder.name, config=to_dict(config), params=811_200, device="cpu",
                dtype="float32", max_steps=300, tokens_per_step=8192, time=T0),
    ]  # fmt: skip
    for step in range(10, 301, 10):
        events.append(
            p.Step(step=step, loss=4.2 * 0.993**step + 1.3, lr=1e-3 * min(1.0, step / 50),
                   grad_norm=1.5 * 0.996**step, tokens_per_s=41_000.0 + 40 * (step % 70),
                   step_ms=200.0, mfu=None, mem_gb=0.61, tokens=8192 * step,
                   eta_s=0.2 * (300 - step), time=T0 + step)
        )  # fmt: skip
        if step % 100 == 0:
            loss = 4.2 * 0.993**step + 1.4
            events.append(p.Eval(step=step, val_loss=loss, ppl=2.718**loss, time=T0 + step))
            events.append(p.Sample(step=step, prompt="The ", text="king hath said to thee,\n"
                                   "and all the world", time=T0 + step))  # fmt: skip
    events.append(p.Checkpoint(step=300, path=str(folder / "checkpoints/step_00000300.pt"),
                               best=True, val_loss=1.48, time=T0 + 300))  # fmt: skip
    events.append(p.Done(step=300, reason="finished", elapsed_s=64.0, time=T0 + 301))
    (folder / "metrics.jsonl").write_bytes(b"".join(p.encode(e) for e in events))
    return folder


async def until(pilot: Pilot, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the pane never reached its state"
        await pilot.pause(0.05)


async def steady(pilot: Pilot) -> None:
    """Let the app mount and show its first pane, with cursors that do not blink."""
    await pilot.pause()
    for editor in pilot.app.query(Input):
        editor.cursor_blink = False


async def settle(view, pilot: Pilot) -> None:
    """Show what a run view has taken in now, charts included, rather than on its timers."""
    view.flush()
    await pilot.pause()
    view.charts.redraw()
    await pilot.pause()


def test_config_pane_with_the_tiny_preset(snap_compare, workdir):
    assert snap_compare(StudioApp(), terminal_size=SIZE, run_before=steady)


def test_dataset_pane_looking_inside_a_file(snap_compare, workdir):
    Path("notes.txt").write_text(CORPUS, encoding="utf-8")
    config = load_preset("tiny")
    config.data.source = "notes.txt"
    app = StudioApp(config, "preset:tiny")

    async def run_before(pilot: Pilot) -> None:
        await steady(pilot)
        await pilot.press("ctrl+f")
        await until(pilot, lambda: app.dataset_pane.facts is not None)
        await until(pilot, lambda: app.dataset_pane.query_one("#data-tree").cursor_node)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_train_pane_ready_to_start(snap_compare, workdir):
    assert snap_compare(StudioApp(), terminal_size=SIZE, press=["ctrl+t"], run_before=steady)


def test_train_pane_after_following_a_run_to_its_end(snap_compare, workdir):
    run = finished_run(Path("runs/server"))
    app = StudioApp(follow=run)

    async def run_before(pilot: Pilot) -> None:
        await steady(pilot)
        await until(pilot, lambda: app.train_pane.view.last(p.Done) is not None)
        await settle(app.train_pane.view, pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_pane_with_no_model_yet(snap_compare, workdir):
    assert snap_compare(StudioApp(), terminal_size=SIZE, press=["ctrl+l"], run_before=steady)


def test_runs_pane_with_a_finished_run_open(snap_compare, workdir):
    finished_run(Path("runs/tiny"))
    app = StudioApp()

    async def run_before(pilot: Pilot) -> None:
        await steady(pilot)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.runs_pane.runs)
        await pilot.press("enter")
        await until(pilot, lambda: app.runs_pane.view.last(p.Done) is not None)
        await settle(app.runs_pane.view, pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
