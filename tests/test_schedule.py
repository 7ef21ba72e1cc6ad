import itertools
import math

import pytest

from engine.contract.config import TrainConfig
from engine.schedule import lr_at


def schedule(kind: str, **kw) -> TrainConfig:
    base = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, lr_schedule=kind)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
def test_warmup_rises_linearly_to_the_peak(kind):
    t = schedule(kind)
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(4, t) == pytest.approx(5e-4)
    assert lr_at(9, t) == pytest.approx(1e-3)


def test_cosine_decays_to_min_lr_through_the_midpoint():
    t = schedule("cosine")
    assert lr_at(10, t) == pytest.approx(1e-3)
    assert lr_at(60, t) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(110, t) == pytest.approx(1e-4)
    assert lr_at(500, t) == pytest.approx(1e-4)  # past the end it holds min_lr
    values = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_decays_in_equal_steps():
    t = schedule("linear")
    assert lr_at(60, t) == pytest.approx(5.5e-4)
    assert lr_at(110, t) == pytest.approx(1e-4)


def test_constant_holds_the_peak():
    t = schedule("constant")
    assert {lr_at(s, t) for s in range(10, 200)} == {1e-3}


def test_wsd_holds_then_decays_over_the_last_fraction():
    t = schedule("wsd", decay_fraction=0.2, max_steps=100)
    assert lr_at(79, t) == 1e-3
    assert lr_at(90, t) == pytest.approx(5.5e-4)
    assert lr_at(100, t) == pytest.approx(1e-4)


def test_no_warmup_starts_at_the_peak():
    t = schedule("cosine", warmup_steps=0)
    assert lr_at(0, t) == pytest.approx(1e-3)
    assert all(math.isfinite(lr_at(s, t)) for s in range(0, 120))
