"""Continual-learning metrics on the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training on experience ``i`` (0-based). Columns are
the *distinct* tasks of the stream, in order of first appearance; ``trained[i]`` is the task that
experience ``i`` trains on, so a recurring task (power-law streams, recurring domains) is one column
and weighs the same as any other task. ``first[j]`` is the first experience that trains on task j.
In the usual stream each experience is a new task: ``trained = [0, 1, ..., T-1]``, R is square and
every definition below is the textbook one. ``n`` is the number of rows so far (``T`` when complete).
docs/metrics.md has the same text.

- average accuracy after step i:   A_i = mean_{j: first[j] <= i} R[i, j]; final average accuracy A_{n-1}
- average incremental accuracy:    mean_i A_i
- forgetting (Chaudhry et al. 2018): mean_{j: first[j] <= n-2} ( max_{l in [first[j], n-2]} R[l, j] - R[n-1, j] )
- backward transfer:               mean_{j: first[j] <= n-2} ( R[n-1, j] - R[first[j], j] )
- forward transfer:                mean_{j: 1 <= first[j] <= n-1} ( R[first[j]-1, j] - b_j ), b_j = initial accuracy
- intransigence (Chaudhry et al. 2018): mean_{j: first[j] <= n-1} ( R*[first[j], j] - R[first[j], j] ),
                                   R* the matrix of a reference run (joint training) of the same stream
- transfer (ZSCL, MTIL):           mean_{j: first[j] >= 1} mean_{i < first[j]} R[i, j]  (accuracy on a
                                   task before it is learned)
- average over all entries (ZSCL "Avg"): mean of every R[i, j]; "Last": mean of the last row

Lower-is-better matrices (token scenarios: ``L[i, j]`` = mean next-token loss on domain j after
experience i; ``summarize_lower``) use the same definitions on ``-L``, so a positive forgetting is
still harm and a positive transfer still help:
- forgetting:        mean_j ( L[n-1, j] - min_{l in [first[j], n-2]} L[l, j] )   (loss gained since its best)
- backward transfer: mean_j ( L[first[j], j] - L[n-1, j] )                       (> 0: the loss went down)
- forward transfer:  mean_j ( b_j - L[first[j]-1, j] ), b_j = initial model's loss (> 0: lower than initially)
- average loss A_i = mean_{j: first[j] <= i} L[i, j]; average perplexity = mean_j exp(L[n-1, j])
"""
import numpy as np


def _check(R, trained=None):
    R = np.asarray(R, dtype=float)
    if R.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D [rows, tasks], got shape {R.shape}")
    if trained is None:
        if R.shape[0] > R.shape[1]:
            raise ValueError(f"a matrix with more rows than tasks needs `trained`, got shape {R.shape}")
        trained = list(range(R.shape[1]))
    trained = list(trained)
    if len(trained) < R.shape[0]:
        raise ValueError(f"`trained` names {len(trained)} experiences but R has {R.shape[0]} rows")
    first = {}
    for i, j in enumerate(trained):
        first.setdefault(j, i)
    return R, first


def average_accuracy(R, i=None, trained=None):
    """A_i = mean over the tasks trained by step i of R[i, j] (default: the last row)."""
    R, first = _check(R, trained)
    i = R.shape[0] - 1 if i is None else i
    return float(np.mean([R[i, j] for j, f in first.items() if f <= i]))


def average_incremental_accuracy(R, trained=None):
    R, _ = _check(R, trained)
    return float(np.mean([average_accuracy(R, i, trained) for i in range(R.shape[0])]))


def forgetting(R, trained=None):
    """Mean over tasks learned before the last row of (best accuracy since first learned, up to the
    second-to-last row) minus (last-row accuracy)."""
    R, first = _check(R, trained)
    n = R.shape[0]
    terms = [R[f:n - 1, j].max() - R[n - 1, j] for j, f in first.items() if f <= n - 2]
    return float(np.mean(terms)) if terms else float("nan")


def backward_transfer(R, trained=None):
    R, first = _check(R, trained)
    n = R.shape[0]
    terms = [R[n - 1, j] - R[f, j] for j, f in first.items() if f <= n - 2]
    return float(np.mean(terms)) if terms else float("nan")


def forward_transfer(R, initial, trained=None):
    """Mean over tasks first learned at a step f >= 1 of R[f-1, j] - b_j (b: initial accuracies)."""
    R, first = _check(R, trained)
    n = R.shape[0]
    if initial is None:
        return float("nan")
    b = np.asarray(initial, dtype=float)
    terms = [R[f - 1, j] - b[j] for j, f in first.items() if 1 <= f <= n - 1]
    return float(np.mean(terms)) if terms else float("nan")


def intransigence(R, reference, trained=None):
    """Chaudhry et al. 2018 (RWalk), Eq. 6: how much less the run learns a task than a reference
    (joint) model did, right when the task is first learned: mean_j R*[first[j], j] - R[first[j], j]."""
    R, first = _check(R, trained)
    if reference is None:
        return float("nan")
    ref = np.asarray(reference, dtype=float)
    n = R.shape[0]
    terms = [ref[f, j] - R[f, j] for j, f in first.items() if f <= n - 1]
    return float(np.mean(terms)) if terms else float("nan")


def transfer(R, trained=None):
    """ZSCL's "Transfer" (MTIL): for each task learned at a step f >= 1, its mean accuracy over the
    rows before f (zero-shot / not yet learned), averaged over those tasks."""
    R, first = _check(R, trained)
    n = R.shape[0]
    terms = [R[:min(f, n), j].mean() for j, f in first.items() if f >= 1]
    return float(np.mean(terms)) if terms else float("nan")


def average_all_entries(R):
    """ZSCL's "Avg": the mean of every entry of the (rows x tasks) matrix."""
    return float(np.asarray(R, dtype=float).mean())


def summarize(R, initial=None, R_task=None, trained=None, reference=None):
    """All scalar metrics of a (possibly partial) accuracy matrix, as a dict."""
    R, _ = _check(R, trained)
    out = {
        "average_accuracy": average_accuracy(R, trained=trained),
        "average_incremental_accuracy": average_incremental_accuracy(R, trained),
        "forgetting": forgetting(R, trained),
        "backward_transfer": backward_transfer(R, trained),
        "forward_transfer": forward_transfer(R, initial, trained),
        "transfer": transfer(R, trained),
        "average_all_entries": average_all_entries(R),
        "last": float(R[-1].mean()),
    }
    if reference is not None:
        out["intransigence"] = intransigence(R, reference, trained)
    if R_task is not None:
        out["task_il_average_accuracy"] = average_accuracy(R_task, trained=trained)
        out["task_il_forgetting"] = forgetting(R_task, trained)
        # ZSCL's MTIL numbers are task-IL (each dataset classified among its own classes)
        out["task_il_transfer"] = transfer(R_task, trained)
        out["task_il_average_all_entries"] = average_all_entries(R_task)
        out["task_il_last"] = float(np.asarray(R_task, dtype=float)[-1].mean())
    return out


def summarize_lower(L, initial=None, trained=None):
    """Scalar metrics of a lower-is-better matrix (losses): the accuracy definitions applied to -L
    (module docstring), so positive forgetting = harm, positive transfer = help. A metric that is
    undefined for this matrix (forgetting after one experience) is None."""
    L, first = _check(L, trained)
    neg_initial = None if initial is None else -np.asarray(initial, dtype=float)
    n = L.shape[0]
    out = {
        "average_loss": average_accuracy(L, trained=trained),
        "average_incremental_loss": average_incremental_accuracy(L, trained),
        "average_perplexity": float(np.mean([np.exp(L[n - 1, j]) for j, f in first.items() if f <= n - 1])),
        "forgetting": forgetting(-L, trained),
        "backward_transfer": backward_transfer(-L, trained),
        "forward_transfer": forward_transfer(-L, neg_initial, trained),
        "last": float(L[-1].mean()),
    }
    return {k: (None if v != v else v) for k, v in out.items()}   # undefined (e.g. one experience): None


def accuracy(logits, y, classes=None):
    """(class-IL correct count, task-IL correct count) for a batch.

    Task-IL masks the logits to ``classes`` (the experience's classes) before the argmax.
    """
    correct = (logits.argmax(1) == y).sum().item()
    if classes is None:
        return correct, correct
    mask = logits.new_full((logits.shape[1],), float("-inf"))
    mask[list(classes)] = 0.0
    correct_task = ((logits + mask).argmax(1) == y).sum().item()
    return correct, correct_task


def domain_errors(correct, total):
    """Per-domain error from per-domain counts; mean over domains with data."""
    errs = {d: 1.0 - correct[d] / total[d] for d in total if total[d] > 0}
    return errs, (float(np.mean(list(errs.values()))) if errs else float("nan"))
