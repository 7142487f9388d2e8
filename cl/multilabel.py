"""Multi-label class-incremental learning (MLCIL): metrics, losses and the class-incremental split.

Targets are multi-hot float tensors ``y [N, C]`` (``cl.data.TensorData`` keeps them as float32).
Everything below follows the MULTI-LANE authors' code (tdemin16/multi-lane), file by file:

- ``average_precision`` / ``mean_average_precision``: per-class average precision (the step-wise
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, as scikit-learn's
  ``average_precision_score`` and torchmetrics' ``average_precision(task='multilabel')``, which
  ``multi_lane/utils.py`` calls), averaged over the classes (macro). A class with no positive sample
  has no AP and is left out of the average (torchmetrics returns NaN for it and ignores it in the
  macro average, which is how the authors' masked-out classes drop out).
- ``f1_scores``: CF1 and OF1 at the authors' threshold, sigmoid(logit) > 0.8 (``multi_lane/utils.py``
  ``f1_score_per_class`` / ``f1_score_overall``). CF1 is the *mean of the per-class F1* (a class with
  no prediction or no positive gets F1 0, their ``zero_division=0``); OF1 is the F1 of the overall
  precision and recall (all classes pooled).
- ``multilabel_split``: a sample belongs to the experience of *every* task that holds one of its
  labels (``multi_lane/datasets.py`` ``split_single_dataset``: ``set(targets[k]) & set(scope) != {}``),
  for training and test alike; a sample with labels of two tasks is in both.
- ``masked_bce``: the authors' training loss (``multi_lane/engine.py`` ``train_one_epoch``): the logits
  and targets of the classes outside the current task set to 0, then ``BCEWithLogitsLoss`` (mean
  over all B x C entries, so each masked entry adds the constant log 2 and no gradient).
"""
import math

import torch
import torch.nn.functional as F

from cl.data import is_multihot
from cl.errors import ConfigError

F1_THRESHOLD = 0.8                    # multi_lane/utils.py: sigmoid(predicts).gt(0.8)


# ---------------------------------------------------------------------------- metrics
def average_precision(scores, targets):
    """AP of one class: ``scores [N]`` (any monotone score, e.g. logits), ``targets [N]`` in {0, 1}.

    Step-wise AP over the distinct thresholds (ties share one threshold), as
    ``sklearn.metrics.average_precision_score``; NaN when the class has no positive sample."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    t = torch.as_tensor(targets, dtype=torch.float64).flatten()
    n_pos = float(t.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    tp = torch.cumsum(t, 0)
    # the last index of each run of equal scores is where a threshold is placed
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, k = tp[last], torch.nonzero(last).flatten().double() + 1
    precision, recall = tp / k, tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def per_class_ap(scores, targets, classes=None):
    """{class: AP} over ``classes`` (default: all columns); classes with no positive are left out."""
    classes = range(scores.shape[1]) if classes is None else classes
    out = {}
    for c in classes:
        ap = average_precision(scores[:, c], targets[:, c])
        if not math.isnan(ap):
            out[int(c)] = ap
    return out


def mean_average_precision(scores, targets, classes=None):
    """mAP: the mean of the per-class APs of ``classes`` with at least one positive (NaN if none has)."""
    aps = per_class_ap(scores, targets, classes)
    return float(sum(aps.values()) / len(aps)) if aps else float("nan")


def f1_scores(scores, targets, classes=None, threshold=F1_THRESHOLD, logits=True):
    """(CF1, OF1) over the columns ``classes`` (default all): predictions sigmoid(score) > threshold
    (``logits=False``: score > threshold). CF1 = mean over classes of per-class F1 (0 when a class has
    no prediction or no positive); OF1 = F1 of the pooled precision and recall."""
    cols = list(range(scores.shape[1])) if classes is None else list(classes)
    s, t = scores[:, cols].double(), targets[:, cols].double()
    pred = ((torch.sigmoid(s) if logits else s) > threshold).double()
    tp, n_pred, n_true = (pred * t).sum(0), pred.sum(0), t.sum(0)
    p = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), torch.zeros_like(tp))
    r = torch.where(n_true > 0, tp / n_true.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-300), torch.zeros_like(p))
    cf1 = float(f1.mean()) if len(cols) else float("nan")
    TP, NP, NT = float(tp.sum()), float(n_pred.sum()), float(n_true.sum())
    op, orc = (TP / NP if NP else 0.0), (TP / NT if NT else 0.0)
    of1 = 2 * op * orc / (op + orc) if op + orc > 0 else 0.0
    return cf1, of1


def rows_with_labels(targets, classes):
    """Boolean mask of the samples that hold at least one label in ``classes``."""
    cols = torch.as_tensor(list(classes), dtype=torch.long)
    return targets[:, cols].sum(1) > 0


def step_metrics(scores, targets, seen):
    """The authors' per-step evaluation (``engine.py`` ``evaluate_till_now_multi``): on the test
    samples with a label among the ``seen`` classes, mAP, CF1 and OF1 over the seen classes."""
    rows = rows_with_labels(targets, seen)
    s, t = scores[rows], targets[rows]
    cf1, of1 = f1_scores(s, t, seen)
    return {"map": mean_average_precision(s, t, seen), "cf1": cf1, "of1": of1}


def task_map(scores, targets, classes):
    """A cell of the mAP matrix: mAP over the task's ``classes`` on the samples holding one of them
    (the task's own test set under ``multilabel_split``)."""
    rows = rows_with_labels(targets, classes)
    return mean_average_precision(scores[rows], targets[rows], classes)


# ---------------------------------------------------------------------------- losses
def masked_bce(logits, y, classes=None):
    """BCE-with-logits as the authors train (module docstring): outside ``classes`` logits and
    targets are set to 0 (a constant log 2 per entry, no gradient); mean over all entries."""
    if classes is not None:
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        keep[torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)] = True
        logits = logits.masked_fill(~keep, 0.0)
        y = y.masked_fill(~keep, 0.0)
    return F.binary_cross_entropy_with_logits(logits.float(), y.float())


def classification_loss(logits, y):
    """Cross-entropy for long labels [B]; BCE-with-logits for multi-hot targets [B, C]."""
    if is_multihot(y):
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return F.cross_entropy(logits, y)


def labels_in(y):
    """The classes present in a batch: the label values (single-label) or the columns with a positive."""
    if is_multihot(y):
        return torch.nonzero(y.sum(0) > 0).flatten().tolist()
    return y.unique().tolist()


# ---------------------------------------------------------------------------- the split
def task_classes(order, base, increment):
    """Classes of each task: ``base`` first (0: ``increment``), then ``increment`` per task
    (``split_single_dataset``: the remaining classes must divide evenly)."""
    order = list(order)
    first = base or increment
    if increment < 1 or first > len(order) or (len(order) - first) % increment:
        raise ConfigError(f"Cannot split {len(order)} classes into a first task of {first} and tasks of {increment}: "
                          "(classes - base) must be a multiple of the increment (e.g. COCO B40-C10: base 40, increment 10).")
    out = [order[:first]]
    for s in range(first, len(order), increment):
        out.append(order[s:s + increment])
    return out


def multilabel_split(targets, tasks):
    """Indices of the samples of each task: those with at least one label in the task's classes."""
    return [torch.nonzero(rows_with_labels(targets, cls)).flatten() for cls in tasks]


def hide_other_labels(targets, classes):
    """Targets with every column outside ``classes`` zeroed (labels of other tasks hidden in training)."""
    keep = torch.zeros(targets.shape[1], dtype=torch.bool)
    keep[torch.as_tensor(list(classes), dtype=torch.long)] = True
    return targets * keep.to(targets.dtype)
