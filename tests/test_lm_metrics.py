"""Metrics of lower-is-better (loss) matrices on a hand-computed case, and their sign convention."""
import math

import pytest

from cl.metrics import summarize_lower

#          domain:  0    1    2
L = [[2.0, 5.0, 6.0],      # after experience 0
     [2.6, 3.0, 5.5],      # after experience 1
     [2.4, 3.5, 3.2]]      # after experience 2
INITIAL = [5.5, 5.6, 6.1]


def test_summarize_lower_hand_computed():
    m = summarize_lower(L, INITIAL)
    assert m["average_loss"] == pytest.approx((2.4 + 3.5 + 3.2) / 3)
    assert m["average_incremental_loss"] == pytest.approx((2.0 + (2.6 + 3.0) / 2 + (2.4 + 3.5 + 3.2) / 3) / 3)
    assert m["average_perplexity"] == pytest.approx((math.exp(2.4) + math.exp(3.5) + math.exp(3.2)) / 3)
    # forgetting: final minus best earlier loss: domain 0: 2.4 - min(2.0, 2.6) = 0.4; domain 1: 3.5 - 3.0 = 0.5
    assert m["forgetting"] == pytest.approx((0.4 + 0.5) / 2)
    # backward transfer: loss just after learning minus final: (2.0 - 2.4) and (3.0 - 3.5)
    assert m["backward_transfer"] == pytest.approx((-0.4 - 0.5) / 2)
    # forward transfer: initial loss minus loss before learning: (5.6 - 5.0) and (6.1 - 5.5)
    assert m["forward_transfer"] == pytest.approx((0.6 + 0.6) / 2)
    assert m["last"] == pytest.approx((2.4 + 3.5 + 3.2) / 3)


def test_sign_convention_improvement_is_positive_transfer_and_negative_forgetting():
    better = [[3.0, 4.0], [2.5, 2.0]]            # learning domain 1 also lowered domain 0's loss
    m = summarize_lower(better, [4.0, 4.5])
    assert m["forgetting"] == pytest.approx(-0.5) and m["backward_transfer"] == pytest.approx(0.5)
    assert m["forward_transfer"] == pytest.approx(0.5)


def test_one_experience_leaves_transfer_undefined():
    m = summarize_lower([[2.0]], [5.0])
    assert m["average_loss"] == 2.0 and m["forgetting"] is None and m["backward_transfer"] is None
    assert m["forward_transfer"] is None and summarize_lower([[2.0, 3.0]])["forward_transfer"] is None
