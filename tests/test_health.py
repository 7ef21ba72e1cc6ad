"""The training-health guard: which updates are skipped, when a run is unhealthy, and that its
judgement survives a restart."""

from __future__ import annotations

import math
import random

import torch

from engine.health import HealthGuard, all_finite


def steady(guard: HealthGuard, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        assert guard.judge(3.0 + rng.gauss(0, 0.02), 1.0 + rng.gauss(0, 0.05)).ok


def test_a_non_finite_loss_or_norm_is_never_applied_and_is_counted():
    guard = HealthGuard(spike_z=0)
    assert guard.judge(math.nan, 1.0).reason == "non-finite loss"
    assert guard.judge(2.0, math.inf).reason == "non-finite gradient norm"
    assert guard.judge(2.0, 1.0).ok
    assert guard.skipped == 2 and guard.bad_in_a_row == 0


def test_a_spike_far_outside_the_recent_distribution_is_skipped_a_drop_is_not():
    guard = HealthGuard(spike_z=6.0, window=50)
    steady(guard, 50)
    verdict = guard.judge(4.0, 1.0)
    assert verdict.reason == "loss spike" and verdict.z > 6
    assert guard.judge(3.0, 5.0).reason == "gradient-norm spike"
    assert guard.judge(2.0, 1.0).ok  # the loss falling fast is good news
    assert guard.judge(3.05, 1.02).ok


def test_no_spike_is_called_before_the_window_knows_what_is_normal():
    guard = HealthGuard(spike_z=3.0)
    assert guard.judge(10.0, 1.0).ok and guard.judge(3.0, 1.0).ok and guard.judge(9.0, 4.0).ok


def test_k_bad_steps_in_a_row_make_a_run_unhealthy_and_a_good_step_resets_the_streak():
    guard = HealthGuard(max_bad_steps=3)
    guard.judge(math.nan, 1.0)
    guard.judge(math.nan, 1.0)
    assert not guard.unhealthy
    guard.judge(3.0, 1.0)
    for _ in range(3):
        guard.judge(math.inf, math.nan)
    assert guard.unhealthy
    guard.rolled_back(0.5)
    assert not guard.unhealthy and guard.rollbacks == 1 and guard.lr_scale == 0.5


def test_the_guard_judges_the_same_after_a_state_dict_round_trip():
    a = HealthGuard(spike_z=5.0, window=40)
    steady(a, 60, seed=3)
    a.judge(math.nan, 1.0)
    b = HealthGuard(spike_z=5.0, window=40)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    rng = random.Random(9)
    for _ in range(30):
        loss, norm = 3.0 + rng.gauss(0, 0.1), 1.0 + rng.gauss(0, 0.3)
        assert a.judge(loss, norm) == b.judge(loss, norm)


def test_weights_with_a_nan_anywhere_are_not_finite():
    state = {
        "model": {"w": torch.ones(3, 3), "steps": torch.tensor([1, 2])},
        "opt": [torch.zeros(2)],
    }
    assert all_finite(state)
    state["opt"][0][1] = math.inf
    assert not all_finite(state)
