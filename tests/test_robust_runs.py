"""Runs that cannot be lost: fault injection on tiny CPU runs.

NaN on a step that is not logged, a learning rate that blows the weights up, two writers of one
run folder, kill -9 in the middle of checkpoint writes, a full disk, a signal, a run too large
for the machine. Each test proves what the user had is still there afterwards.
"""

from __future__ import annotations

import errno
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import wait_until
from test_train import events, tiny_config

from engine import checkpoint
from engine.contract import config
from engine.contract import events as p
from engine.contract.errors import UsageError
from engine.contract.runlock import RunLocked
from engine.files import remove_stale_temps
from engine.model import GPT
from engine.train import train

ROOT = Path(__file__).resolve().parent.parent
FAULTS = {"injected": 0, "survived": 0}


def survived() -> None:
    FAULTS["survived"] += 1


def inject() -> None:
    FAULTS["injected"] += 1


def kept_checkpoints_are_finite(cfg: config.Config) -> list[int]:
    steps = []
    for path in checkpoint.CheckpointManager(cfg.run_dir).step_files():
        state = checkpoint.load(path)
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )
        steps.append(state["progress"]["step"])
    return steps


class Records:
    """A console sink that keeps every event, and can act on one."""

    def __init__(self, on_event=None) -> None:
        self.events: list[p.Event] = []
        self.on_event = on_event

    def write(self, event: p.Event) -> None:
        self.events.append(event)
        if self.on_event:
            self.on_event(event)

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_a_nan_on_a_step_that_is_not_logged_is_skipped_and_counted(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train__max_steps=12, log__interval=10, checkpoint__interval=5)
    forward, calls = GPT.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if self.training and loss is not None:
            calls["n"] += 1
            if calls["n"] == 3:  # step 3: not a log step
                inject()
                loss = loss * math.nan
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    state = train(cfg, quiet=True)
    assert state.step == 12
    steps = [e for e in events(cfg) if isinstance(e, p.Step)]
    assert steps[0].step == 10 and steps[0].skipped == 1 and math.isfinite(steps[0].loss)
    warnings = [e.message for e in events(cfg) if isinstance(e, p.Log) and e.level == "warning"]
    assert any("step 3: update skipped (non-finite loss)" in w for w in warnings)
    assert kept_checkpoints_are_finite(cfg) == [10, 12]
    survived()


@pytest.mark.slow
def test_a_learning_rate_that_blows_up_never_overwrites_the_good_checkpoints(tmp_path):
    cfg = tiny_config(
        tmp_path, train__max_steps=40, train__lr=1e4, train__min_lr=0.0, train__grad_clip=0.0,
        train__warmup_steps=0, log__interval=10, checkpoint__interval=1, train__max_rollbacks=1,
        train__max_bad_steps=2,
    )  # fmt: skip
    inject()
    with pytest.raises(UsageError, match="diverged"):
        train(cfg, quiet=True)
    kept = kept_checkpoints_are_finite(cfg)
    assert kept  # good checkpoints remain, and none holds NaN
    logs = [e.message for e in events(cfg) if isinstance(e, p.Log)]
    assert any("rolled back to step" in m for m in logs)
    survived()


def test_a_checkpoint_is_never_written_from_weights_that_are_not_finite(tmp_path):
    saver = checkpoint.CheckpointManager(tmp_path)
    good = {"model": {"w": torch.ones(2)}, "config": {}}
    saver.save(good, 1)
    inject()
    with pytest.raises(checkpoint.NonFiniteWeights, match="no checkpoint was written"):
        saver.save({"model": {"w": torch.tensor([1.0, math.nan])}, "config": {}}, 2)
    assert [f.name for f in saver.step_files()] == ["step_00000001.pt"]
    survived()


@pytest.mark.slow
def test_a_diverging_run_on_stop_says_so_in_one_line_and_keeps_its_checkpoints(tmp_path):
    cfg = tiny_config(
        tmp_path, train__max_steps=30, train__lr=1e4, train__grad_clip=0.0, train__min_lr=0.0,
        train__warmup_steps=0, checkpoint__interval=1, train__on_unhealthy="stop",
        train__max_bad_steps=1,
    )  # fmt: skip
    with pytest.raises(UsageError, match=r"training diverged: 1 bad steps in a row") as err:
        train(cfg, quiet=True)
    assert "\n" not in str(err.value)
    assert kept_checkpoints_are_finite(cfg)
    error = events(cfg)[-1]
    assert isinstance(error, p.Error) and "diverged" in error.message


def start_headless(cfg: config.Config, tmp_path: Path, *extra: str) -> subprocess.Popen:
    path = config.save(cfg, tmp_path / "run.toml", overwrite=True)
    return subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def has_step(cfg: config.Config) -> bool:
    path = cfg.run_dir / "metrics.jsonl"
    return path.exists() and b'"type": "step"' in path.read_bytes()


@pytest.mark.slow
def test_a_live_run_refuses_a_second_writer_and_after_kill_9_resumes_and_cleans_up(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=100_000, checkpoint__interval=2)
    first = start_headless(cfg, tmp_path)
    saver = checkpoint.CheckpointManager(cfg.run_dir)
    try:
        wait_until(lambda: len(saver.step_files()) >= 2, 60, "two checkpoints")
        inject()
        with pytest.raises(RunLocked, match=f"being trained by process {first.pid}"):
            train(cfg, quiet=True)
        inject()
        with pytest.raises(RunLocked, match=f"process {first.pid}"):
            train(cfg, resume="", quiet=True)
        survived()
        survived()
    finally:
        first.kill()  # kill -9: no handler runs, the kernel drops the lock
        first.wait()
    inject()
    assert sum(isinstance(e, p.Start) for e in events(cfg)) == 1  # nothing interleaved
    # what a kill during a write leaves: a hidden temporary checkpoint of a dead process
    (saver.dir / f".step_99999999.pt.{first.pid}.tmp").write_bytes(b"\0" * 1000)
    latest = checkpoint.load(saver.latest())["progress"]["step"]
    records = Records()
    cfg.train.max_steps = latest + 2
    state = train(cfg, resume="", console=records)
    assert state.step == latest + 2
    assert not list(saver.dir.glob(".*.tmp"))
    notes = [e.message for e in records.events if isinstance(e, p.Log)]
    assert any("killed mid-save" in n for n in notes)
    survived()


def test_kill_9_at_random_points_of_checkpoint_writes_leaves_every_checkpoint_loadable(tmp_path):
    """A child writes checkpoints in a loop; it is killed at random moments, mid-write or not."""
    rng = random.Random(0)
    path = tmp_path / "step_00000001.pt"
    state = {"model": {"w": torch.randn(256, 256)}, "config": {"model": {}}}
    checkpoint.atomic_save(state, path)
    leftovers = 0
    for _ in range(8):
        pid = os.fork()
        if pid == 0:  # the child: write the same file over and over until killed
            try:
                while True:
                    checkpoint.atomic_save(state, path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        inject()
        loaded = checkpoint.load(path)  # always the old file or the new one, never half
        assert torch.equal(loaded["model"]["w"], state["model"]["w"])
        leftovers += len(remove_stale_temps(tmp_path))
        survived()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    print(f"\n8 kills, {leftovers} left a temporary file mid-write, all cleaned")


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train__max_steps=20, checkpoint__interval=5)
    save, calls = torch.save, {"n": 0}

    def full_after_two(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_two)
    inject()
    with pytest.raises(UsageError, match=r"step_00000015\.pt: no space left on the device") as e:
        train(cfg, quiet=True)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert kept_checkpoints_are_finite(cfg) == [5, 10]
    assert not list((cfg.run_dir / "checkpoints").glob(".*"))  # no partial file left
    survived()


@pytest.mark.slow
def test_a_signal_writes_the_checkpoint_before_anything_else(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=1000, train__eval_interval=1000)

    def on_event(event: p.Event) -> None:
        if isinstance(event, p.Step) and event.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    records = Records(on_event)
    inject()
    state = train(cfg, console=records)
    assert isinstance(records.events[-1], p.Done) and records.events[-1].reason == "signal"
    after = [e for e in records.events if getattr(e, "step", 0) >= state.step]
    kinds = [type(e).__name__ for e in after if not isinstance(e, p.Log)]
    assert kinds == ["Step", "Checkpoint", "Done"]  # no eval, no samples before it
    assert "Eval" not in kinds and "Sample" not in kinds
    survived()


@pytest.mark.parametrize("override", [{"model__n_layer": 100_000}, {"train__batch_size": 10**9}])
def test_a_run_too_large_for_the_machine_is_refused_before_anything_is_written(tmp_path, override):
    cfg = tiny_config(tmp_path, **override)
    inject()
    with pytest.raises(UsageError, match=r"needs about .* but cpu has .*check_memory=false"):
        train(cfg, quiet=True)
    assert not cfg.run_dir.exists()  # a fresh start or --resume later finds nothing in the way
    survived()


def test_zz_fault_counts(capsys):
    with capsys.disabled():
        print(f"\nfaults injected {FAULTS['injected']}, survived {FAULTS['survived']}")


@pytest.mark.slow
def test_extending_a_run_lists_what_changed_and_what_the_schedule_does(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=10, checkpoint__interval=5)
    train(cfg, quiet=True)
    cfg.train.max_steps, cfg.train.lr = 20, 2e-3
    records = Records()
    state = train(cfg, resume="", console=records)
    assert state.step == 20
    notes = [e.message for e in records.events if isinstance(e, p.Log)]
    changed = next(n for n in notes if n.startswith("settings changed since the checkpoint"))
    assert "train.lr 0.003 -> 0.002" in changed and "train.max_steps 10 -> 20" in changed
    plan = next(n for n in notes if n.startswith("schedule re-planned at step 10"))
    assert "cosine decay is re-planned to reach 0.0003 at step 20" in plan and "->" in plan


@pytest.mark.slow
def test_a_branch_starts_a_new_run_from_a_kept_step_and_leaves_the_source_untouched(tmp_path):
    from engine.train import main

    cfg = tiny_config(
        tmp_path, train__max_steps=10, checkpoint__interval=5, checkpoint__keep_last=5
    )
    train(cfg, quiet=True)
    source = cfg.run_dir
    before = {f.name: f.read_bytes() for f in source.rglob("*") if f.is_file()}
    path = config.save(cfg, tmp_path / "run.toml", overwrite=True)
    assert main([str(path), "--name=b", "--train.max_steps=8", f"--branch={source}@5"]) == 0
    after = {f.name: f.read_bytes() for f in source.rglob("*") if f.is_file()}
    assert after == before
    branched = [e for e in config_events(source.parent / "b")]
    start = next(e for e in branched if isinstance(e, p.Start))
    assert start.resumed_from == 5 and branched[-1].step == 8
    notes = [e.message for e in branched if isinstance(e, p.Log)]
    assert any(n.startswith("branched from") and "at step 5" in n for n in notes)


def config_events(run_dir: Path) -> list[p.Event]:
    from engine import metrics

    return metrics.read_events(run_dir / "metrics.jsonl")
