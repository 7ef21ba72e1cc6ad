"""One writer per run folder; what a killed writer left behind is cleaned up at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.contract.runlock import RunLock, RunLocked, holder
from engine.files import pid_alive, remove_stale_temps

ROOT = Path(__file__).resolve().parent.parent

HOLD = textwrap.dedent(
    """
    import sys, time
    from engine.contract.runlock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    sys.stdin.read()
    """
)


def hold_in_child(run_dir: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_with_the_live_holders_pid(tmp_path):
    child = hold_in_child(tmp_path / "run")
    try:
        with pytest.raises(RunLocked, match=f"process {child.pid}"):
            RunLock(tmp_path / "run").acquire()
        assert holder(tmp_path / "run") == child.pid
    finally:
        child.kill()
        child.wait()
    # the kernel let go when the holder died: the next writer gets in at once
    assert holder(tmp_path / "run") is None
    with RunLock(tmp_path / "run") as lock:
        assert lock.held and holder(tmp_path / "run") == os.getpid()


def test_a_lock_that_made_its_folder_removes_it_when_nothing_was_written(tmp_path):
    with RunLock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    with RunLock(tmp_path / "kept"):
        (tmp_path / "kept" / "metrics.jsonl").write_text("")
    assert (tmp_path / "kept" / "metrics.jsonl").exists()


def test_a_run_folder_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="is a file, not a folder") as err:
        RunLock(tmp_path / "file" / "run").acquire()
    assert "Traceback" not in str(err.value) and str(tmp_path / "file") in str(err.value)


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid) and pid_alive(os.getpid())
    (tmp_path / f".step_00000010.pt.{dead.pid}.tmp").write_bytes(b"x" * 100)
    (tmp_path / f".step_00000020.pt.{os.getpid()}.tmp").write_bytes(b"x")
    (tmp_path / f".abc123.tmp-{dead.pid}").mkdir()
    (tmp_path / f".abc123.tmp-{dead.pid}" / "train_000.bin").write_bytes(b"y" * 50)
    (tmp_path / "step_00000010.pt").write_bytes(b"kept")
    removed = {path.name: size for path, size in remove_stale_temps(tmp_path)}
    assert removed == {f".step_00000010.pt.{dead.pid}.tmp": 100, f".abc123.tmp-{dead.pid}": 50}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".step_00000020.pt.{os.getpid()}.tmp",
        "step_00000010.pt",
    ]
