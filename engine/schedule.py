"""Learning-rate schedules as pure functions of the step: resuming needs no scheduler state."""

from __future__ import annotations

import math

from engine.contract.config import TrainConfig, warmup_steps


def lr_at(step: int, t: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Every schedule warms up linearly over `warmup_steps`, then: cosine or linear decay to
    `min_lr` at `max_steps`; constant; or warmup-stable-decay, which holds `lr` and spends the
    last `decay_fraction` of the run decaying linearly to `min_lr`.
    """
    warmup = warmup_steps(t)  # a warmup longer than the run is cut (the contract's rule)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "wsd":
        decay_start = t.max_steps - round(t.decay_fraction * t.max_steps)
        if step < decay_start:
            return t.lr
        span, done = t.max_steps - decay_start, step - decay_start
    else:
        span, done = t.max_steps - warmup, step - warmup
    progress = min(1.0, done / span) if span > 0 else 1.0
    if t.lr_schedule == "cosine":
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)
    return t.lr - progress * (t.lr - t.min_lr)  # linear, and the tail of wsd


def describe_change(step: int, before: TrainConfig, after: TrainConfig) -> str:
    """What the learning rate does at `step` when a resumed run's schedule settings changed.

    The rule: a schedule is a pure function of the step and the settings in force, so a longer
    (or shorter) run re-plans the whole curve — cosine and linear stretch their decay to the new
    `max_steps`, warmup-stable-decay stays stable until the new decay start. The learning rate
    therefore continues from where the new plan puts this step, which this sentence states.
    """
    was, now = lr_at(step, before), lr_at(step, after)
    kind = after.lr_schedule
    if kind == "wsd":
        decay_start = after.max_steps - round(after.decay_fraction * after.max_steps)
        plan = (
            f"warmup-stable-decay holds {after.lr:.3g} until step {decay_start:,}, then decays to "
            f"{after.min_lr:.3g} by step {after.max_steps:,}"
        )
    elif kind == "constant":
        plan = f"the constant schedule stays at {after.lr:.3g}"
    else:
        plan = (
            f"the {kind} decay is re-planned to reach {after.min_lr:.3g} at step "
            f"{after.max_steps:,}"
        )
    jump = "unchanged" if math.isclose(was, now, rel_tol=1e-9) else f"{was:.3g} -> {now:.3g}"
    return f"schedule re-planned at step {step:,}: {plan}; the learning rate here is {jump}"
