"""Learning-rate schedules as pure functions of the step: resuming needs no scheduler state."""

from __future__ import annotations

import math

from engine.contract.config import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Every schedule warms up linearly over `warmup_steps`, then: cosine or linear decay to
    `min_lr` at `max_steps`; constant; or warmup-stable-decay, which holds `lr` and spends the
    last `decay_fraction` of the run decaying linearly to `min_lr`.
    """
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "wsd":
        decay_start = t.max_steps - round(t.decay_fraction * t.max_steps)
        if step < decay_start:
            return t.lr
        span, done = t.max_steps - decay_start, step - decay_start
    else:
        span, done = t.max_steps - t.warmup_steps, step - t.warmup_steps
    progress = min(1.0, done / span) if span > 0 else 1.0
    if t.lr_schedule == "cosine":
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)
    return t.lr - progress * (t.lr - t.min_lr)  # linear, and the tail of wsd
