"""Several processes from the Train pane: the run goes under torchrun and is one run to control."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from studio_helpers import RecordingApp, drive, log_text, small_run, until
from textual.pilot import Pilot

from engine.contract import events as p
from studio.jobs import Exit, first_error, rank_errors, train_command
from studio.panes.train import RunState

pytestmark = pytest.mark.usefixtures("engine_on_path")


def test_more_than_one_process_is_a_torchrun_command_with_each_ranks_log_apart(tmp_path):
    assert train_command(["c.toml"], 1, tmp_path)[1:] == ["-m", "engine.train", "c.toml"]
    command = train_command(["c.toml", "--report-to", "unix:x"], 2, tmp_path)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in command and f"--log-dir={tmp_path / 'ranks'}" in command
    assert command[-5:] == ["-m", "engine.train", "c.toml", "--report-to", "unix:x"]


def test_a_failed_rank_is_named_with_its_own_error(tmp_path):
    logs = tmp_path / "ranks" / "run_abc" / "attempt_0"
    for rank, text in {
        0: "step 3 ok\n",
        1: json.dumps({"type": "error", "message": "out of memory", "time": 1.0}) + "\n",
        2: "Traceback (most recent call last):\nRuntimeError: NCCL timeout\n",
    }.items():
        (logs / str(rank)).mkdir(parents=True)
        (logs / str(rank) / "stderr.log").write_text(text, encoding="utf-8")
    ranks = rank_errors(tmp_path / "ranks")
    assert ranks == {1: "out of memory", 2: "RuntimeError: NCCL timeout"}
    exit = Exit(1, ["torchrun: worker failed"], ranks=ranks)
    assert first_error(exit) == "rank 1: out of memory; rank 2: RuntimeError: NCCL timeout"


@pytest.mark.slow
def test_a_two_process_cpu_run_starts_from_the_train_pane_and_finishes(tmp_path: Path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path, **{"train.max_steps": "12"}))
        train = app.train_pane
        await pilot.press("ctrl+t")
        train.query_one("#train-processes").value = "2"
        train.focus()
        await pilot.press("s")
        await until(pilot, lambda: train.last_exit is not None, "the run to end", timeout=300)
        assert train.last_exit.code == 0, log_text(app)
        start = train.view.last(p.Start)
        assert start is not None and start.world_size == 2
        assert "2 processes under torchrun (ddp); one run" in log_text(app)
        assert train.view.last(p.Done).step == 12 and train.state is RunState.IDLE

    drive(test)
