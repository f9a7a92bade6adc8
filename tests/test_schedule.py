import math

import pytest

from prefopt.train.schedule import lr_factor


def test_constant_with_warmup():
    # warmup 4: steps 0..3 give 1/4, 2/4, 3/4, 4/4; then constant 1.
    assert [lr_factor(s, schedule="constant", total_steps=10, warmup_steps=4) for s in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decay():
    # no warmup, 10 steps: factor = 1 - s/10.
    assert lr_factor(0, schedule="linear", total_steps=10) == 1.0
    assert lr_factor(5, schedule="linear", total_steps=10) == pytest.approx(0.5)
    assert lr_factor(10, schedule="linear", total_steps=10) == pytest.approx(0.0)


def test_cosine_with_warmup_and_floor():
    # warmup 2 of 12 → decay over 10 steps; at step 7, progress 0.5 → 0.5*(1+cos(pi/2)) = 0.5.
    assert lr_factor(7, schedule="cosine", total_steps=12, warmup_steps=2) == pytest.approx(0.5)
    # with min_ratio 0.1: 0.1 + 0.9 * 0.5 = 0.55
    assert lr_factor(7, schedule="cosine", total_steps=12, warmup_steps=2, min_ratio=0.1) == pytest.approx(0.55)
    # progress 0.25 (step 4.5 is not integral: use total 10, no warmup, step 2.5 → take step 5 of 20)
    assert lr_factor(5, schedule="cosine", total_steps=20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(1, schedule="step", total_steps=10)
