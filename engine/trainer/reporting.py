"""What the loop reports and how it measures it: the start record, per-interval step records
(throughput, MFU, ETA over the steps since the last one) and validation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from engine import device
from engine.contract import events as p
from engine.model import GPT
from engine.trainer.eta import Eta


class Diverged(Exception):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(
            f"training diverged: {what}; the kept checkpoints are from before. Lower train.lr, "
            "raise train.warmup_steps or set train.grad_clip, then --resume"
        )
        self.step = step


class StepMeter:
    """Sums the loss of the applied steps since the last record, counts the skipped ones, and
    times them all, leaving out the time spent on evaluation, samples and saves between steps;
    `eta` learns from both what the rest of the run will take."""

    def __init__(
        self, tokens_per_step: int, flops_per_step: float, peak: float | None,
        eta: Eta | None = None, clock: Callable[[], float] = time.perf_counter,
    ) -> None:  # fmt: skip
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self.eta = eta
        self.clock = clock
        self.started = clock()
        self.window_start, self.window_steps = self.started, 0
        self.loss_sum, self.good, self.skipped = 0.0, 0, 0
        self.extras_start = self.step_start = self.started

    def add(self, loss: float, applied: bool) -> None:
        if applied:
            self.loss_sum, self.good = self.loss_sum + loss, self.good + 1
        else:
            self.skipped += 1
        self.window_steps += 1
        self.extras_start = self.clock()
        if self.eta is not None:
            self.eta.step(self.extras_start - self.step_start)

    @contextmanager
    def extra(self, kind: str) -> Iterator[None]:
        """Time one piece of work between steps ("eval", "sample", "save") for the ETA."""
        began = self.clock()
        yield
        if self.eta is not None:
            self.eta.extra(kind, self.clock() - began)

    @property
    def has_loss(self) -> bool:
        """Whether any step since the last record was applied (else there is no loss to say)."""
        return self.good > 0

    def restart(self) -> None:
        """Forget the window (after a rollback: its steps were undone)."""
        self.window_start, self.window_steps = self.clock(), 0
        self.step_start = self.window_start
        self.loss_sum, self.good, self.skipped = 0.0, 0, 0

    def record(
        self, step: int, tokens: int, lr: float, grad_norm: float, max_steps: int,
        runtime: device.Runtime,
    ) -> p.Step:  # fmt: skip
        """The step record for the window (the mean loss of its applied steps, the count of
        skipped ones), which it then closes."""
        mean_loss = self.loss_sum / self.good
        step_s = (self.extras_start - self.window_start) / self.window_steps
        record = p.Step(
            step=step, loss=mean_loss, lr=lr, grad_norm=grad_norm,
            tokens_per_s=self.tokens_per_step / step_s, step_ms=1000 * step_s,
            mfu=self.flops_per_step / step_s / self.peak if self.peak else None,
            mem_gb=runtime.memory_gb(), tokens=tokens,
            eta_s=self.eta.remaining(step) if self.eta else (max_steps - step) * step_s,
            skipped=self.skipped,
        )  # fmt: skip
        self.loss_sum, self.good, self.skipped = 0.0, 0, 0
        self.window_steps, self.window_start = 0, self.extras_start
        return record

    def end_extras(self) -> None:
        """Time since the step ended was not step time."""
        self.step_start = self.clock()
        self.window_start += self.step_start - self.extras_start

    def elapsed(self) -> float:
        return self.clock() - self.started


@torch.no_grad()
def evaluate(model: GPT, loader: Any, steps: int, runtime: device.Runtime) -> float:
    """Mean loss over the same `steps` validation batches every time, so evals compare."""
    model.eval()
    loader.reset()
    total = 0.0
    for _ in range(steps):
        x, y = loader.next()
        with runtime.compute:
            _, loss = model(x, y)
        total += loss.item()
    model.train()
    return total / steps


def eval_event(step: int, val_loss: float) -> p.Eval:
    return p.Eval(step=step, val_loss=val_loss, ppl=math.exp(min(val_loss, 50.0)))
