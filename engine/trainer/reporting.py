"""What the loop reports and how it measures it: the start record, per-interval step records
(throughput, MFU, ETA over the steps since the last one) and validation."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from engine import device
from engine.contract import events as p
from engine.model import GPT


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"loss became {loss} by step {step}; lower train.lr, raise train.warmup_steps "
            "or set train.grad_clip"
        )
        self.step = step


class StepMeter:
    """Sums the loss of the steps since the last record and times them, leaving out the time
    spent on evaluation, samples and saves between steps."""

    def __init__(self, tokens_per_step: int, flops_per_step: float, peak: float | None) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self.started = time.perf_counter()
        self.window_start, self.window_steps = self.started, 0
        self.loss_sum: torch.Tensor | None = None
        self.extras_start = self.started

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.window_steps += 1
        self.extras_start = time.perf_counter()

    def record(
        self, step: int, tokens: int, lr: float, grad_norm: float, mean_loss: float,
        max_steps: int, runtime: device.Runtime,
    ) -> p.Step:  # fmt: skip
        """The step record for the window, which it then closes; raises Diverged on a NaN."""
        if not math.isfinite(mean_loss):
            raise Diverged(step, mean_loss)
        step_s = (self.extras_start - self.window_start) / self.window_steps
        self.loss_sum = None
        self.window_steps, self.window_start = 0, self.extras_start
        return p.Step(
            step=step, loss=mean_loss, lr=lr, grad_norm=grad_norm,
            tokens_per_s=self.tokens_per_step / step_s, step_ms=1000 * step_s,
            mfu=self.flops_per_step / step_s / self.peak if self.peak else None,
            mem_gb=runtime.memory_gb(), tokens=tokens, eta_s=(max_steps - step) * step_s,
        )  # fmt: skip

    def window_loss(self) -> torch.Tensor:
        assert self.loss_sum is not None
        return self.loss_sum

    def end_extras(self) -> None:
        """Time since the step ended was not step time."""
        self.window_start += time.perf_counter() - self.extras_start

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@torch.no_grad()
def evaluate(model: GPT, loader: Any, steps: int, runtime: device.Runtime) -> float:
    """Mean loss over the same `steps` validation batches every time, so evals compare."""
    model.eval()
    loader.reset()
    total = 0.0
    for _ in range(steps):
        x, y = loader.next()
        with runtime.autocast:
            _, loss = model(x, y)
        total += loss.item()
    model.train()
    return total / steps


def eval_event(step: int, val_loss: float) -> p.Eval:
    return p.Eval(step=step, val_loss=val_loss, ppl=math.exp(min(val_loss, 50.0)))
