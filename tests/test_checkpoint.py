import os
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.checkpoint import CheckpointManager
from engine.contract.errors import UsageError


def state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "config": {"name": "t"}, "step": step}


def test_keeps_only_the_last_n_step_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        manager.save(state(step), step)
    assert [p.name for p in manager.step_files()] == ["step_00000030.pt", "step_00000040.pt"]
    assert checkpoint.load(manager.latest())["progress"]["step"] == 40


def test_best_tracks_the_lowest_validation_loss_and_survives_rotation(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    assert manager.save(state(1), 1, val_loss=3.0)[1] is True
    assert manager.save(state(2), 2, val_loss=2.0)[1] is True
    assert manager.save(state(3), 3, val_loss=2.5)[1] is False
    assert manager.save(state(4), 4)[1] is False
    assert [p.name for p in manager.step_files()] == ["step_00000004.pt"]
    assert checkpoint.load(manager.best())["progress"]["step"] == 2
    assert manager.best_val_loss() == 2.0
    assert checkpoint.resolve(tmp_path) == manager.best()


def test_resolve_uses_latest_when_no_best_exists(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(state(5), 5)
    assert checkpoint.resolve(tmp_path) == manager.latest()
    with pytest.raises(UsageError, match="no checkpoints in this run directory"):
        checkpoint.resolve(_empty(tmp_path))
    with pytest.raises(UsageError, match="no such checkpoint file or run directory"):
        checkpoint.resolve(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save(state(1), 1)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        manager.save(state(2), 2)
    assert checkpoint.load(manager.latest())["progress"]["step"] == 1
    assert [p.name for p in manager.dir.iterdir()] == ["step_00000001.pt"]  # no temp file left


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    torch.save({"model": Payload(), "config": {}}, path)  # torch.save pickles anything
    with pytest.raises(UsageError, match=r"holds pickled Python objects.*refusing"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"garbage", "not a readable checkpoint"), (None, "not a gpt-studio checkpoint")],
)
def test_bad_checkpoint_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        checkpoint.load(path)


def test_any_garbage_gets_the_same_reason_and_a_torn_zip_keeps_torchs(tmp_path):
    """The unpickler's complaint about random bytes depends on which bytes it meets first
    ("pop from empty list", "invalid load key"): a user is told one thing whatever they are."""
    import random

    garbage = tmp_path / "garbage.pt"
    for seed in range(40):
        garbage.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(
            UsageError, match=r"not a readable checkpoint \(unsupported pickle data\)"
        ):
            checkpoint.load(garbage)
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(4)}, whole)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UsageError, match="zip archive"):
        checkpoint.load(torn)
