"""Training-health guards: which steps' updates to skip, and when a run has gone bad.

Every step's loss and gradient norm are judged before the optimizer applies the update. A value
that is not finite is never applied. A value far outside its recent distribution (a z-score
above `spike_z` against the last `window` good steps, as llm.c does) is skipped too, once the
window holds enough steps to say what is normal. After `max_bad_steps` bad steps in a row the
run is unhealthy, and the trainer rolls back to its last good checkpoint with a lower learning
rate or stops, as `train.on_unhealthy` says.

Pure Python over floats: the trainer hands it two numbers per step, and its state (the window
and the counts) goes into the checkpoint so a resumed run judges exactly as the first did.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

MIN_HISTORY = 20  # good steps seen before a spike can be called one


@dataclass(frozen=True)
class Verdict:
    """The judgement of one step: `ok`, or why its update is skipped."""

    reason: str = ""  # "" | "non-finite loss" | "non-finite gradient norm" | "loss spike" | ...
    z: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason


OK = Verdict()


class _Window:
    """Mean and standard deviation of the last `size` values."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def z(self, x: float) -> float:
        n = len(self.values)
        if n < MIN_HISTORY:
            return 0.0
        mean = sum(self.values) / n
        var = sum((v - mean) ** 2 for v in self.values) / (n - 1)
        std = math.sqrt(var)
        # a flat history (std ~ 0) calls nothing a spike: relative noise floor of 1e-3
        std = max(std, 1e-3 * abs(mean), 1e-12)
        return (x - mean) / std


class HealthGuard:
    """Judges each step; counts what it skipped. `spike_z` 0 turns spike detection off."""

    def __init__(self, spike_z: float = 0.0, window: int = 100, max_bad_steps: int = 5) -> None:
        self.spike_z = spike_z
        self.max_bad_steps = max_bad_steps
        self.loss = _Window(window)
        self.norm = _Window(window)
        self.bad_in_a_row = 0
        self.skipped = 0  # updates skipped over the run
        self.rollbacks = 0
        self.lr_scale = 1.0  # what rollbacks have multiplied the schedule's learning rate by

    def judge(self, loss: float, grad_norm: float) -> Verdict:
        """The verdict on one step, recorded: a good step joins the history."""
        verdict = self._verdict(loss, grad_norm)
        if verdict.ok:
            self.bad_in_a_row = 0
            self.loss.values.append(loss)
            self.norm.values.append(grad_norm)
        else:
            self.bad_in_a_row += 1
            self.skipped += 1
        return verdict

    def _verdict(self, loss: float, grad_norm: float) -> Verdict:
        if not math.isfinite(loss):
            return Verdict("non-finite loss")
        if not math.isfinite(grad_norm):
            return Verdict("non-finite gradient norm")
        if self.spike_z > 0:
            # only upward spikes are trouble: a sudden drop in loss is good news
            z = self.loss.z(loss)
            if z > self.spike_z:
                return Verdict("loss spike", z)
            z = self.norm.z(grad_norm)
            if z > self.spike_z:
                return Verdict("gradient-norm spike", z)
        return OK

    @property
    def unhealthy(self) -> bool:
        """Too many bad steps in a row: time to roll back or stop."""
        return self.max_bad_steps > 0 and self.bad_in_a_row >= self.max_bad_steps

    def rolled_back(self, lr_factor: float) -> None:
        """After a rollback: the bad steps are undone (the history of good ones stays), and the
        learning rate from here on is `lr_factor` times lower again."""
        self.bad_in_a_row = 0
        self.rollbacks += 1
        self.lr_scale *= lr_factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": list(self.loss.values),
            "norm": list(self.norm.values),
            "bad_in_a_row": self.bad_in_a_row,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.values.clear()
        self.loss.values.extend(float(v) for v in state.get("loss", []))
        self.norm.values.clear()
        self.norm.values.extend(float(v) for v in state.get("norm", []))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))


def all_finite(tensors: Any) -> bool:
    """Whether every floating-point tensor in a state dict (nested dicts and lists too) is
    finite: a checkpoint is never written from weights that are not."""
    import torch

    flags = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel():
                flags.append(torch.isfinite(value).all())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(tensors)
    return bool(torch.stack(flags).all()) if flags else True
