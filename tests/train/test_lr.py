import math

import pytest

from mmflow.train.lr import lr_at


def test_warmup_is_linear_and_reaches_the_base_lr():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(4, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)


def test_cosine_decays_to_the_floor_through_the_midpoint():
    base, floor = 2.0, 0.1
    assert lr_at(100, base, 0, 100, floor) == pytest.approx(base * floor)
    mid = lr_at(50, base, 0, 100, floor)
    assert mid == pytest.approx(base * (floor + (1 - floor) * 0.5))
    values = [lr_at(s, base, 10, 100, floor) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_past_the_end_the_lr_stays_at_the_floor():
    assert lr_at(500, 1.0, 0, 100, 0.2) == pytest.approx(0.2)
    assert not math.isnan(lr_at(0, 1.0, 0, 1))
