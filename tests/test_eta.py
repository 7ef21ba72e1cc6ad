"""The ETA a run shows, replayed on a fake clock with a fixed timing model: the first estimate is
close to the time that really remains, although the first step is slow and evaluations, samples
and saves still lie ahead."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.trainer.eta import Eta, due
from engine.trainer.reporting import StepMeter

MAX_STEPS, LOG, EVAL, SAMPLE, SAVE = 2500, 10, 250, 500, 500
FIRST_STEP_S, STEP_S = 3.0, 0.1  # a first step that allocates and launches kernels cold
EVAL_S, SAMPLE_S, SAVE_S = 0.8, 2.0, 0.3


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


class Runtime:
    def memory_gb(self) -> float:
        return 0.5


def replay(with_eta: bool) -> list[tuple[float, float]]:
    """(ETA shown, seconds that really remained) at every step record of the run, as the
    trainer's loop calls the meter: step, record, evaluation, sample, save."""
    clock = Clock()
    eta = Eta(MAX_STEPS, {"eval": EVAL, "sample": SAMPLE, "save": SAVE}, {"eval": 20 / 3})
    meter = StepMeter(64, 1.0, None, eta if with_eta else None, clock=clock)
    shown: list[tuple[int, float, float]] = []
    for step in range(1, MAX_STEPS + 1):
        jitter = 0.02 if step % 2 else -0.02  # steps vary a little around their mean
        clock.now += FIRST_STEP_S if step == 1 else STEP_S + jitter
        meter.add(2.0, True)
        last = step == MAX_STEPS
        if step % LOG == 0 or last:
            record = meter.record(step, 64 * step, 1e-3, 1.0, MAX_STEPS, Runtime())
            shown.append((step, record.eta_s, clock.now))
        for kind, every, took in (("eval", EVAL, EVAL_S), ("sample", SAMPLE, SAMPLE_S),
                                  ("save", SAVE, SAVE_S)):  # fmt: skip
            if step % every == 0 or last:
                with meter.extra(kind):
                    clock.now += took
        meter.end_extras()
    end = clock.now
    return [(eta_s, end - at) for _, eta_s, at in shown]


def test_the_first_eta_is_within_half_again_of_the_time_that_really_remains():
    (first, real), *rest = replay(with_eta=True)
    assert real / 1.5 <= first <= real * 1.5, (first, real)
    assert all(real / 1.5 <= eta <= real * 1.5 for eta, real in rest[:-1] if real > 10)
    # the window's mean alone (the old rule) counts the cold first step 2,490 times over
    (old_first, _), *_ = replay(with_eta=False)
    assert old_first > 3 * real


def test_work_between_steps_is_counted_as_often_as_it_is_still_due():
    assert due(0, 2500, 500) == 5 and due(500, 2500, 500) == 4 and due(2500, 2500, 500) == 0
    assert due(10, 300, 250) == 2  # step 250, and the last step, which always evaluates
    eta = Eta(100, {"eval": 50}, {"eval": 3.0})
    assert eta.remaining(0) is None
    eta.step(10.0)  # a cold first step is all there is: it is the estimate
    assert eta.remaining(1) == pytest.approx(99 * 10.0 + 2 * 3 * 10.0)
    eta.step(1.0)
    eta.extra("eval", 4.0)  # measured: used instead of the guess
    assert eta.remaining(2) == pytest.approx(98 * 1.0 + 2 * 4.0)
