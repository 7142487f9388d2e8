"""Continual-evaluation metrics: what happens to each task *during* training (the stability gap).

Paper: De Lange, van de Ven, Tuytelaars, "Continual evaluation for lifelong learning: identifying
the stability gap", ICLR 2023 (arXiv 2205.13452). Authors' code: github.com/Mattdl/ContinualEvaluation,
``src/eval/continual_eval_metrics.py`` (TaskTrackingMINAccuracyPluginMetric, WCACCPluginMetric,
WindowedForgettingPluginMetric, WindowedPlasticityPluginMetric); the definitions below follow that
file (which tasks count, where the window starts, the floor at 0).

Input: the curve the runner records with ``eval_every`` (results.json ``continual_eval``), a list of
records in time order::

    {"step": 120, "experience": 2, "accuracy": [a_0, a_1, a_2]}     # optional "task": 2

``accuracy[j]`` is the value on task ``j`` for the tasks seen so far (a prefix). The task being
trained at that record is ``record["task"]`` when present, else ``record["experience"]``.
Every function takes ``higher_is_better`` (False for a loss or perplexity curve): "worst" is then
the largest value, a "drop" is a rise, and the returned numbers stay in the curve's units with the
sign that makes a bigger number a bigger problem (depth, forgetting) or a bigger gain (plasticity).

- ``min_acc``: per task j, the worst value of j at any record where j is seen but not the task
  being trained (i.e. after j was learned). The paper's avg-min-ACC is their mean.
- ``wc_acc``: worst-case accuracy at each record, mean of the trained task's current value and the
  other tasks' min-ACC so far (with k tasks: 1/k A_cur + (1 - 1/k) mean min-ACC). The reported
  number is its value at the last record.
- ``windowed_forgetting`` WF^w: per task, the largest A_i - A_l over pairs i < l of the task's
  evaluations at most w - 1 apart (a window holds w evaluations, as the authors' deque), floored at
  0; the reported number is the mean over tasks. ``windowed_plasticity`` WP^w: the largest rise
  A_l - A_i in the same windows. (The authors' WP code skips window starts that are below an
  earlier value of the window, a shortcut that is exact for WF only; we take all pairs, as the
  paper's definition, so on a curve that dips then rises within a window our WP can be larger.)
- ``stability_gaps``: for each task j and each later experience k (j not trained in k): the value
  just before the boundary (last record before experience k), the worst value during k, ``depth``
  = drop below the boundary value (>= 0), and ``length`` = steps from that last record before the
  boundary to the first record of experience k, after the worst one, at which the value is back at
  the boundary value (None: not recovered within experience k). ``recovered_fraction`` is the part
  of the drop won back by the end of experience k.

Note on the evaluation subset: the authors draw a new random subset of each task's test set before
every training iteration; the runner here draws one fixed subset per task (``eval_subset``), so
the curve moves only when the model does.
"""
import dataclasses

import numpy as np
import torch

WINDOWS = (10, 100)   # the authors report WF/WP with windows of 10 and 100 evaluations


def _sign(higher_is_better):
    return 1.0 if higher_is_better else -1.0


def current_task(record):
    """The task being trained at a record (``task`` if recorded, else the experience index)."""
    return int(record.get("task", record["experience"]))


def num_tasks(curves):
    return max((len(r["accuracy"]) for r in curves), default=0)


def task_series(curves, task):
    """[(step, experience, value)] of ``task`` over the records that evaluate it, in order."""
    return [(r["step"], r["experience"], r["accuracy"][task]) for r in curves if len(r["accuracy"]) > task]


# ---------------------------------------------------------------------------- min-ACC, WC-ACC
def min_acc(curves, higher_is_better=True):
    """{task: worst value after it was learned}; tasks never evaluated while another is trained are absent."""
    s = _sign(higher_is_better)
    worst = {}
    for r in curves:
        cur = current_task(r)
        for j, v in enumerate(r["accuracy"]):
            if j != cur and (j not in worst or s * v < s * worst[j]):
                worst[j] = v
    return worst


def wc_acc_series(curves, higher_is_better=True):
    """[(step, WC-ACC)] at every record: mean of the trained task's value and the min-ACC so far of
    the other tasks (min-ACC updated with this record first, as the authors' tracking order does)."""
    s = _sign(higher_is_better)
    worst, out = {}, []
    for r in curves:
        cur = current_task(r)
        for j, v in enumerate(r["accuracy"]):
            if j != cur and (j not in worst or s * v < s * worst[j]):
                worst[j] = v
        if cur < len(r["accuracy"]):
            values = [r["accuracy"][cur]] + [w for j, w in worst.items() if j != cur]
            out.append((r["step"], float(np.mean(values))))
    return out


def wc_acc(curves, higher_is_better=True):
    """WC-ACC at the last record (None for an empty curve)."""
    series = wc_acc_series(curves, higher_is_better)
    return series[-1][1] if series else None


# ---------------------------------------------------------------------------- WF^w, WP^w
def _largest_change(values, window, sign):
    """max over i < l, l - i <= window - 1 of sign * (values[i] - values[l]), floored at 0."""
    a = np.asarray(values, dtype=float)
    best = 0.0
    for lag in range(1, min(window, len(a))):
        best = max(best, float((sign * (a[:-lag] - a[lag:])).max()))
    return best


def windowed_forgetting(curves, window=10, higher_is_better=True):
    """{task: WF^w}: the largest drop of the task's value within ``window`` consecutive evaluations."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    s = _sign(higher_is_better)
    return {j: _largest_change([v for _, _, v in task_series(curves, j)], window, s) for j in range(num_tasks(curves))}


def windowed_plasticity(curves, window=10, higher_is_better=True):
    """{task: WP^w}: the largest rise of the task's value within ``window`` consecutive evaluations."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    s = _sign(higher_is_better)
    return {j: _largest_change([v for _, _, v in task_series(curves, j)], window, -s) for j in range(num_tasks(curves))}


# ---------------------------------------------------------------------------- the gap itself
def stability_gaps(curves, higher_is_better=True):
    """One dict per (task, later experience) pair, in order of task then experience:
    ``{task, experience, boundary_step, before, worst, worst_step, depth, length, recovered_fraction}``
    (see the module docstring). Pairs without a record before the boundary are skipped."""
    s = _sign(higher_is_better)
    by_exp = {}
    for idx, r in enumerate(curves):
        by_exp.setdefault(r["experience"], []).append(idx)
    out = []
    for j in range(num_tasks(curves)):
        for k, idxs in sorted(by_exp.items()):
            during = [curves[i] for i in idxs if len(curves[i]["accuracy"]) > j and current_task(curves[i]) != j]
            prior = [r for r in curves[:idxs[0]] if len(r["accuracy"]) > j]
            if not during or not prior or len(during) != len(idxs):
                continue
            before, b_step = prior[-1]["accuracy"][j], prior[-1]["step"]
            vals = [r["accuracy"][j] for r in during]
            w = int(np.argmin([s * v for v in vals]))
            depth = max(0.0, s * (before - vals[w]))
            length = 0 if depth == 0 else next(
                (during[i]["step"] - b_step for i in range(w, len(during)) if s * vals[i] >= s * before), None)
            out.append({"task": j, "experience": k, "boundary_step": b_step, "before": before, "worst": vals[w],
                        "worst_step": during[w]["step"], "depth": depth, "length": length,
                        "recovered_fraction": (s * (vals[-1] - vals[w]) / depth) if depth > 0 else 1.0})
    return out


# ---------------------------------------------------------------------------- summary
def summarize_curves(curves, higher_is_better=True, windows=WINDOWS):
    """(scalar metrics for results.json ``metrics``, per-task details for ``continual_metrics``).

    Scalars: ``min_acc`` (mean over tasks), ``wc_acc`` (last record), ``wf{w}``/``wp{w}`` (mean over
    tasks) and ``gap_depth`` (mean depth of the first gap of every task, at the boundary right after
    it was learned). Empty dicts for an empty curve."""
    if not curves:
        return {}, {}
    mins = min_acc(curves, higher_is_better)
    gaps = stability_gaps(curves, higher_is_better)
    first = {}
    for g in gaps:
        first.setdefault(g["task"], g)
    scalars = {"min_acc": float(np.mean(list(mins.values()))) if mins else None,
               "wc_acc": wc_acc(curves, higher_is_better)}
    details = {"higher_is_better": higher_is_better,
               "min_acc": [mins.get(j) for j in range(num_tasks(curves))], "gaps": gaps}
    for w in windows:
        wf, wp = windowed_forgetting(curves, w, higher_is_better), windowed_plasticity(curves, w, higher_is_better)
        scalars[f"wf{w}"], scalars[f"wp{w}"] = float(np.mean(list(wf.values()))), float(np.mean(list(wp.values())))
        details[f"wf{w}"], details[f"wp{w}"] = [wf[j] for j in sorted(wf)], [wp[j] for j in sorted(wp)]
    scalars["gap_depth"] = float(np.mean([g["depth"] for g in first.values()])) if first else None
    details["first_gap"] = [first.get(j) for j in range(num_tasks(curves))]
    return scalars, details


# ---------------------------------------------------------------------------- evaluation subsets
def eval_subsets(items, samples, seed):
    """Copies of ``items`` (dataclasses with a ``test`` TensorData: Experience or Task) whose test set
    is a fixed subset of ``samples`` examples (all when ``samples`` is 0 or larger than the set),
    drawn once from ``seed``: the same subsets on every run and after --resume."""
    if samples <= 0:
        return list(items)
    g = torch.Generator().manual_seed(seed + 4242)
    out = []
    for item in items:
        n = len(item.test)
        perm = torch.randperm(n, generator=g)
        out.append(item if samples >= n else dataclasses.replace(item, test=item.test.subset(perm[:samples].sort().values)))
    return out
