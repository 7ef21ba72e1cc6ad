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
from studio_helpers import finished_run
from textual.pilot import Pilot
from textual.widgets import Input

from engine.contract import events as p
from engine.contract.config import load_preset
from studio.app import StudioApp

SIZE = (120, 40)
CORPUS = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


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


def test_runs_pane_comparing_two_runs(snap_compare, workdir):
    finished_run(Path("runs/slow"), lr=1e-3, pace=0.995)
    finished_run(Path("runs/fast"), lr=3e-3, pace=0.990)
    app = StudioApp()

    async def run_before(pilot: Pilot) -> None:
        await steady(pilot)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(app.runs_pane.runs) == 2)
        await pilot.press("space", "down", "space", "v")
        await until(pilot, lambda: len(app.runs_pane.compare.runs) == 2)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
