"""mAP, CF1, OF1, the masked BCE and the multi-label split on hand-computed cases (cl/multilabel.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from cl.multilabel import (average_precision, f1_scores, hide_other_labels, masked_bce, mean_average_precision,
                           multilabel_split, step_metrics, task_classes, task_map)


def test_ap_hand_computed():
    # ranking by score: pos, neg, pos, neg -> precision at the positives 1/1, 2/3 -> AP = (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # perfect ranking: 1; worst ranking of 1 positive among 4: 1/4
    assert average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert average_precision([3, 2, 1, 0], [0, 0, 0, 1]) == pytest.approx(0.25)
    # ties share one threshold: all scores equal -> precision = prevalence at recall 1
    assert average_precision([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(0.25)
    assert math.isnan(average_precision([1, 2], [0, 0]))          # no positive: no AP


def test_ap_matches_sklearn_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.randint(0, 5, (30,), generator=g).float()           # many ties
        t = torch.randint(0, 2, (30,), generator=g)
        if t.sum() == 0:
            continue
        assert average_precision(s, t) == pytest.approx(sk.average_precision_score(t.numpy(), s.numpy()))


def test_map_macro_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.7, 0.3, 0.3]])
    targets = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 1, 0]])
    # class 0: AP 1; class 1: ranking 0.8(+), 0.3(+), 0.1(-) -> 1; class 2: no positive, skipped
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)
    targets[2] = torch.tensor([1., 0, 0])
    # class 0: 0.9(+) 0.7(+) 0.2(-) -> 1; class 1: 0.8(+) 0.3(-) 0.1(-) -> 1
    assert mean_average_precision(scores, targets, classes=[0, 1]) == pytest.approx(1.0)
    scores[1, 0] = 0.95             # class 0: 0.95(-) 0.9(+) 0.7(+) -> (1/2 + 2/3) / 2
    assert mean_average_precision(scores, targets, classes=[0]) == pytest.approx((0.5 + 2 / 3) / 2)
    sk = pytest.importorskip("sklearn.metrics")
    assert mean_average_precision(scores, targets, classes=[0, 1]) == pytest.approx(
        sk.average_precision_score(targets[:, :2].numpy(), scores[:, :2].numpy(), average="macro"))


def test_cf1_of1_by_hand():
    # probabilities (logits=False), threshold 0.8
    p = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.95], [0.1, 0.1, 0.1]])
    t = torch.tensor([[1., 0, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]])
    # class 0: pred {0,1}, true {0,1}: P 1 R 1 F1 1
    # class 1: pred {0,2}, true {2,3}: P 1/2 R 1/2 F1 1/2
    # class 2: pred {2},   true {1,2}: P 1 R 1/2 F1 2/3
    cf1, of1 = f1_scores(p, t, logits=False)
    assert cf1 == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    # pooled: TP 2+1+1 = 4, predicted 5, true 6 -> OP 4/5, OR 4/6
    assert of1 == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    # a class never predicted has F1 0 (zero_division=0), and counts in CF1's mean
    cf1, _ = f1_scores(p, t, classes=[0, 2], logits=False)
    assert cf1 == pytest.approx((1 + 2 / 3) / 2)
    p[:, 2] = 0.0
    cf1, _ = f1_scores(p, t, classes=[0, 2], logits=False)
    assert cf1 == pytest.approx(0.5)
    # logits: sigmoid(logit) > 0.8 <=> logit > log(4)
    lg = torch.tensor([[1.5], [1.3]])
    assert f1_scores(lg, torch.tensor([[1.], [1.]]))[1] == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_step_metrics_and_task_map_use_rows_with_labels():
    scores = torch.tensor([[5., 0, 0], [0, 5, 0], [0, 0, 5], [1, 1, 1]])
    targets = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    # task {2}: only row 2 holds class 2 -> its AP over that row is 1
    assert task_map(scores, targets, [2]) == pytest.approx(1.0)
    m = step_metrics(scores, targets, [0, 1])
    assert m["map"] == pytest.approx(1.0)              # rows 0, 1: perfect rankings of classes 0 and 1
    assert m["cf1"] == pytest.approx(1.0) and m["of1"] == pytest.approx(1.0)   # sigmoid(5) > 0.8, sigmoid(0) < 0.8


def test_masked_bce_matches_authors_rule():
    logits = torch.tensor([[2.0, -1.0, 3.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0]])
    loss = masked_bce(logits, y, classes=[0])
    # entries 1, 2 become logit 0 target 0 -> log 2 each; entry 0: softplus(-2)
    expected = (F.softplus(torch.tensor(-2.0)) + 2 * math.log(2)) / 3
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 2] == 0 and logits.grad[0, 0] != 0


def test_split_assigns_samples_to_every_task_of_their_labels():
    y = torch.tensor([[1., 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    tasks = task_classes([0, 1, 2, 3], base=2, increment=1)
    assert tasks == [[0, 1], [2], [3]]
    parts = multilabel_split(y, tasks)
    assert [p.tolist() for p in parts] == [[0, 1, 3], [1], [2]]       # sample 1 is in tasks 0 and 1
    hidden = hide_other_labels(y[parts[1]], tasks[1])
    assert hidden.tolist() == [[0, 0, 1, 0]]                           # its class-0 label is hidden in task 1
    with pytest.raises(Exception, match="multiple of the increment"):
        task_classes(list(range(5)), base=2, increment=2)
