import math

import numpy as np
import pytest
import torch

from cl import metrics

# Hand-computed case: T = 3.
R = np.array([[0.9, 0.1, 0.0],
              [0.6, 0.8, 0.2],
              [0.5, 0.4, 0.7]])
B = [0.1, 0.05, 0.15]


def test_average_accuracy():
    assert metrics.average_accuracy(R, 0) == pytest.approx(0.9)
    assert metrics.average_accuracy(R, 1) == pytest.approx(0.7)          # (0.6 + 0.8) / 2
    assert metrics.average_accuracy(R) == pytest.approx(1.6 / 3)          # (0.5 + 0.4 + 0.7) / 3


def test_average_incremental_accuracy():
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 1.6 / 3) / 3)


def test_forgetting_uses_best_earlier_accuracy():
    # j=0: max(0.9, 0.6) - 0.5 = 0.4 ; j=1: max(0.8) - 0.4 = 0.4
    assert metrics.forgetting(R) == pytest.approx(0.4)
    R2 = R.copy()
    R2[1, 0] = 0.95  # best earlier accuracy is now at l=1
    assert metrics.forgetting(R2) == pytest.approx(((0.95 - 0.5) + 0.4) / 2)


def test_backward_and_forward_transfer():
    assert metrics.backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.4 - 0.8)) / 2)
    # j=1: R[0,1] - b1 = 0.1 - 0.05 ; j=2: R[1,2] - b2 = 0.2 - 0.15
    assert metrics.forward_transfer(R, B) == pytest.approx(0.05)


def test_partial_matrix_and_single_experience():
    s = metrics.summarize(R[:1], B)
    assert s["average_accuracy"] == pytest.approx(0.9)
    assert math.isnan(s["forgetting"]) and math.isnan(s["backward_transfer"])
    s2 = metrics.summarize(R[:2])
    assert s2["forgetting"] == pytest.approx(0.3)  # 0.9 - 0.6


def test_task_il_masking():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0],    # y=2: class-IL wrong (0), task-IL {2,3} right
                           [0.0, 0.0, 1.0, 3.0]])   # y=3: right in both
    y = torch.tensor([2, 3])
    assert metrics.accuracy(logits, y, classes=[2, 3]) == (1, 2)


def test_domain_errors():
    errs, mean = metrics.domain_errors({0: 8, 1: 5}, {0: 10, 1: 10})
    assert errs == {0: pytest.approx(0.2), 1: pytest.approx(0.5)}
    assert mean == pytest.approx(0.35)


# ---------------------------------------------------------------------------- per distinct task
# A recurring stream: experiences train tasks A, B, A, C (columns A, B, C in order of first appearance).
TRAINED = [0, 1, 0, 2]
RR = np.array([[0.8, 0.1, 0.0],
               [0.3, 0.9, 0.1],
               [0.85, 0.5, 0.2],
               [0.6, 0.4, 0.7]])


def test_recurring_task_is_one_column_with_one_weight():
    # A_i over the tasks trained by step i: row 2 has A and B (C not yet), row 3 all three
    assert metrics.average_accuracy(RR, 2, TRAINED) == pytest.approx((0.85 + 0.5) / 2)
    assert metrics.average_accuracy(RR, trained=TRAINED) == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    # forgetting over A (first 0) and B (first 1), both before the last row:
    # A: max(0.8, 0.3, 0.85) - 0.6 = 0.25 ; B: max(0.9, 0.5) - 0.4 = 0.5
    assert metrics.forgetting(RR, TRAINED) == pytest.approx((0.25 + 0.5) / 2)
    # BWT against the accuracy right after first learned: A 0.6 - 0.8, B 0.4 - 0.9
    assert metrics.backward_transfer(RR, TRAINED) == pytest.approx(((0.6 - 0.8) + (0.4 - 0.9)) / 2)
    # FWT: B first at 1 -> R[0, B] - b_B ; C first at 3 -> R[2, C] - b_C
    assert metrics.forward_transfer(RR, [0.0, 0.05, 0.1], TRAINED) == pytest.approx(((0.1 - 0.05) + (0.2 - 0.1)) / 2)
    with pytest.raises(ValueError, match="trained"):
        metrics.forgetting(RR)                       # more rows than tasks needs `trained`


def test_zscl_transfer_average_and_last():
    # transfer: B (first 1): mean(R[:1, B]) = 0.1 ; C (first 3): mean(0.0, 0.1, 0.2) = 0.1
    assert metrics.transfer(RR, TRAINED) == pytest.approx(0.1)
    assert metrics.transfer(R) == pytest.approx((0.1 + (0.0 + 0.2) / 2) / 2)   # square case: upper triangle by column
    assert metrics.average_all_entries(R) == pytest.approx(R.mean())
    s = metrics.summarize(R, B)
    assert s["last"] == pytest.approx(1.6 / 3) and s["average_all_entries"] == pytest.approx(4.2 / 9)


def test_intransigence_against_a_joint_reference():
    joint = np.array([[0.95, 0.1, 0.0],
                      [0.9, 0.9, 0.2],
                      [0.9, 0.85, 0.8]])
    # Chaudhry et al.: reference minus run at the step each task is learned: (0.95-0.9)+(0.9-0.8)+(0.8-0.7)
    assert metrics.intransigence(R, joint) == pytest.approx((0.05 + 0.1 + 0.1) / 3)
    assert metrics.summarize(R, B, reference=joint)["intransigence"] == pytest.approx(0.25 / 3)
    assert "intransigence" not in metrics.summarize(R, B)
