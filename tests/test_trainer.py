"""The Trainer's parts each give back what they saved, and the checkpoint format is versioned."""

import copy
import random

import numpy as np
import pytest
import torch
from test_train import tiny_config

from engine import checkpoint, device, distributed
from engine.contract.config import ModelConfig
from engine.contract.errors import UsageError
from engine.health import HealthGuard
from engine.model import GPT
from engine.train import train
from engine.trainer.optim import ModelAndOptimizer
from engine.trainer.progress import Progress
from engine.trainer.rng import RngState


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trips_every_generator():
    rng = RngState(torch.device("cpu"))
    saved = rng.state_dict()
    first = draws()
    rng.load_state_dict(saved)
    assert draws() == first


def test_progress_round_trips_step_and_tokens():
    progress = Progress(step=7, tokens=7 * 128, losses=[1.0])
    fresh = Progress()
    fresh.load_state_dict(progress.state_dict())
    assert (fresh.step, fresh.tokens) == (7, 7 * 128)


def _model_and_optimizer(seed: int) -> ModelAndOptimizer:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32, dropout=0.0)
    model = GPT(cfg)
    group = distributed.Group(device.pick("cpu", "float32"))
    parallel = distributed.Parallel(model, group)
    return ModelAndOptimizer(
        model,
        parallel,
        model.optimizer(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95)),
        group.runtime,
    )


class Batches:
    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)

    def next(self):
        x = torch.randint(0, 32, (2, 8), generator=self.gen)
        return x, torch.roll(x, -1, 1)


def test_model_and_optimizer_round_trip_continues_the_same_steps():
    one = _model_and_optimizer(0)
    batches = Batches()
    for _ in range(2):
        one.step(batches, 1, 1.0, HealthGuard())
    saved = copy.deepcopy(one.state_dict())  # as a file would: no tensor shared with `one`
    two = _model_and_optimizer(1)  # different weights and an empty optimizer
    two.model.load_state_dict(saved["model"])  # weights go in before the model is wrapped
    two.load_state_dict(saved)
    again = Batches()
    again.gen.set_state(batches.gen.get_state())
    for _ in range(2):
        a, _ = one.step(batches, 1, 1.0, HealthGuard())
        b, _ = two.step(again, 1, 1.0, HealthGuard())
        assert a == b
    for x, y in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(x, y)


def as_format_1(state: dict) -> dict:
    """The payload as every release before format_version wrote it (flat keys)."""
    rank = state["ranks"][0]
    return {
        "model": state["model"], "optimizer": state["optimizer"]["adamw"],
        "scaler": state["optimizer"]["scaler"], "loader": rank["data"], "rng": rank["rng"],
        "step": state["progress"]["step"], "tokens": state["progress"]["tokens"],
        "config": state["config"], "tokenizer": state["tokenizer"], "world_size": 1,
    }  # fmt: skip


@pytest.mark.slow
def test_a_format_1_checkpoint_resumes_exactly(tmp_path):
    whole = train(tiny_config(tmp_path / "a", train__max_steps=20), quiet=True).losses
    half = tiny_config(tmp_path / "b", train__max_steps=20)
    first = train(half, quiet=True, until=10).losses
    saver = checkpoint.CheckpointManager(half.run_dir)
    path = saver.latest()
    old = as_format_1(checkpoint.load(path))
    checkpoint.atomic_save(old, path)
    assert "format_version" not in torch.load(path, weights_only=True)
    assert checkpoint.load_weights(path)["step"] == 10
    second = train(half, resume=str(path), quiet=True).losses
    assert first + second == pytest.approx(whole, abs=0, rel=0)


def test_a_checkpoint_of_a_newer_format_is_refused_naming_its_version(tmp_path):
    path = tmp_path / "new.pt"
    torch.save({"format_version": 99, "model": {}, "config": {}}, path)
    with pytest.raises(UsageError, match=r"new.pt: checkpoint format_version 99 .*\(1 to 2\)"):
        checkpoint.load(path)
