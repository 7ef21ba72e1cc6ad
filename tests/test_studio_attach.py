"""Attaching the studio to a run it did not start: a real headless engine, found in the Runs
pane, paused and stopped from the Train pane."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import wait_until
from studio_helpers import RecordingApp, drive, log_text, until
from test_train import tiny_config
from textual.pilot import Pilot

from engine.contract import events as p
from engine.contract.config import save
from engine.contract.rundir import RunDir
from studio.app import main
from studio.panes.train import RunState

pytestmark = pytest.mark.usefixtures("engine_on_path")


@pytest.mark.slow
def test_a_headless_run_is_attached_from_the_runs_pane_paused_and_stopped(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=100_000, log__interval=5)
    cfg.train.eval_interval = cfg.checkpoint.interval = 50
    path = save(cfg, tmp_path / "headless.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def endpoint():
            assert proc.poll() is None, proc.stderr.read().decode()
            return RunDir(cfg.run_dir).control_record()

        record = wait_until(endpoint, 120, "the run's control endpoint")
        assert record.alive()

        async def test(app: RecordingApp, pilot: Pilot) -> None:
            runs, train = app.runs_pane, app.train_pane
            await pilot.press("ctrl+r")
            await until(pilot, lambda: runs.runs and runs.runs[0].attachable, "a live run")
            assert runs.table.get_row_at(0)[4] == "training"
            await pilot.press("a")
            assert app.tabs.active == "train"
            await until(pilot, lambda: train.state is RunState.TRAINING, "the attached run")
            await until(pilot, lambda: train.view.charts.chart("loss").points >= 2, "its curve")
            assert app.live_run == "t"  # the Chat pane offers its live weights

            await pilot.press("p")
            await until(pilot, lambda: train.state is RunState.PAUSED, "the pause")
            await pilot.press("x")
            await until(pilot, lambda: train.state is RunState.IDLE, "the run to end")
            done = train.view.last(p.Done)
            assert done is not None and done.reason == "stopped"
            await until(pilot, lambda: "the run ended (stopped" in log_text(app), "the news")
            assert app.live_run is None

        drive(test, config=cfg)
        assert proc.wait(timeout=60) == 0
        assert RunDir(cfg.run_dir).control_record() is None  # nothing left to attach to
    finally:
        proc.kill()
        proc.wait()


def test_attach_to_a_folder_where_nothing_trains_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--attach", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --attach {tmp_path}: it holds no control.json")
    assert main(["--attach", "nowhere"]) == 2
    assert "a control address such as unix:" in capsys.readouterr().err
