"""PNG plots of a results dict: accuracy-matrix heatmap, per-domain error, continual-eval curves.

One figure per kind, whatever the stream's length, each rendered once: its cost grows with the
number of points drawn, not with text per cell (cell values are written only on heatmaps up to
``ANNOTATE_MAX`` rows and columns; long axes show at most ``MAX_TICKS`` labels, legends at most
``MAX_LEGEND`` entries). After a 150-domain stream the closing plots took 82.6 s before these
limits (22,500 cell labels drawn twice); see docs/reliability.md.
"""
import io as _io
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ANNOTATE_MAX = 20     # write each cell's value on heatmaps up to this many rows and columns
MAX_TICKS = 40        # at most this many tick labels on an axis of domains
MAX_LEGEND = 12       # a legend only for up to this many curves


def heatmap(ax, R, title):
    R = np.asarray(R, dtype=float)
    im = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
    if max(R.shape) <= ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(R):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training on experience")
    ax.set_title(title)
    return im


def loss_heatmap(ax, L, title):
    """A loss matrix (lower is better, nats): values as they are, reversed colour map."""
    L = np.asarray(L, dtype=float)
    im = ax.imshow(L, cmap="viridis_r")
    if max(L.shape) <= ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(L):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xlabel("evaluated on domain")
    ax.set_ylabel("after training on domain")
    ax.set_title(title)
    return im


def loss_plots(results):
    """Token scenarios: loss-matrix heatmap (nats per token, lower is better) and, with continual
    evaluation, the loss of every domain seen so far against the training step (stability gap)."""
    figs = {}
    L = np.asarray(results.get("loss_matrix") or [], dtype=float)
    domains = [t["name"] for t in results.get("tasks", [])] or list(results.get("domains", []))
    if L.size:
        fig, ax = plt.subplots(figsize=(1.2 * L.shape[1] + 2.5, 0.8 * L.shape[0] + 2))
        im = loss_heatmap(ax, L, f"{results['strategy']}: loss (nats/token)")
        if len(domains) == L.shape[1]:
            ax.set_xticks(range(L.shape[1]), domains, rotation=30, ha="right", fontsize=7)
            ax.set_yticks(range(L.shape[0]), domains[:L.shape[0]], fontsize=7)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        figs["loss_matrix"] = fig
    curves = results.get("continual_eval") or []
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for j in range(max(len(c["loss"]) for c in curves)):
            pts = [(c["step"], c["loss"][j]) for c in curves if len(c["loss"]) > j]
            label = domains[j] if j < len(domains) else f"domain {j}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out loss (nats/token)")
        if max(len(c["loss"]) for c in curves) <= MAX_LEGEND:
            ax.legend(fontsize=7)
        ax.set_title("continual evaluation (loss)")
        fig.tight_layout()
        figs["continual_eval"] = fig
    return figs


def continual_eval_figure(results):
    """Accuracy on each task vs training step, experience boundaries as dashed lines, each task's
    min-ACC as a dotted line from its first boundary on (its worst point marked), and the lr below
    when it changes during the run."""
    lr = results.get("lr") or []
    if len({round(v, 12) for _, v in lr}) > 1:
        fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        (fig, ax), ax_lr = plt.subplots(figsize=(7, 3.8)), None
    draw_continual_eval(ax, results, ax_lr)
    fig.tight_layout()
    return fig


def draw_continual_eval(ax, results, ax_lr=None):
    """The continual-evaluation curves of ``results`` on ``ax`` (and its lr on ``ax_lr``)."""
    from cl.continual_metrics import min_acc, num_tasks, task_series
    curves = results["continual_eval"]
    ends = {}
    for c in curves:
        ends[c["experience"]] = c["step"]            # the last record of each experience
    worst = min_acc(curves)
    for j in range(num_tasks(curves)):
        pts = task_series(curves, j)
        line, = ax.plot([p[0] for p in pts], [100 * p[2] for p in pts], lw=1, label=f"task {j}")
        if j in worst:
            after = [p for p in pts if p[1] > j] or pts
            ax.hlines(100 * worst[j], after[0][0], pts[-1][0], colors=line.get_color(), linestyles=":", lw=1)
            low = min(after, key=lambda p: p[2])
            ax.plot([low[0]], [100 * low[2]], marker="v", color=line.get_color(), ms=5)
    for b in [ends[e] for e in sorted(ends)][:-1]:
        for a in [ax] + ([ax_lr] if ax_lr is not None else []):
            a.axvline(b, color="gray", ls="--", lw=0.8)
    metrics = results.get("metrics") or {}
    title = f"{results.get('strategy', '')}: continual evaluation"
    if metrics.get("min_acc") is not None:
        title += f" (min-ACC {100 * metrics['min_acc']:.1f}, WC-ACC {100 * metrics['wc_acc']:.1f})"
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("accuracy (%)")
    if num_tasks(curves) <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="lower left")
    if ax_lr is not None:
        lr = results.get("lr") or []
        ax_lr.plot([s for s, _ in lr], [v for _, v in lr], color="black", lw=1)
        ax_lr.set_ylabel("lr")
        ax_lr.set_xlabel("training step")
    else:
        ax.set_xlabel("training step")


def save_plots(results, folder, on_figure=None):
    """Write the plots that apply to ``results`` into ``folder`` as PNG; returns {name: PNG bytes}.

    Each figure is rendered once and closed; ``on_figure(name)`` is called after each (progress)."""
    from cl.io import _atomic
    os.makedirs(folder, exist_ok=True)
    figs = {}
    if results.get("accuracy_matrix"):
        fig, ax = plt.subplots(figsize=(5, 4))
        im = heatmap(ax, results["accuracy_matrix"], f"{results['strategy']}: accuracy (%)")
        fig.colorbar(im, ax=ax)
        figs["accuracy_matrix"] = fig
    if results.get("map_matrix"):
        fig, ax = plt.subplots(figsize=(5, 4))
        im = heatmap(ax, results["map_matrix"], f"{results['strategy']}: mAP (%)")
        fig.colorbar(im, ax=ax)
        figs["map_matrix"] = fig
    if results.get("domain_accuracy_matrix"):
        fig, ax = plt.subplots(figsize=(6, 5))
        heatmap(ax, results["domain_accuracy_matrix"], f"{results['strategy']}: accuracy per domain (%)")
        figs["domain_accuracy_matrix"] = fig
    if results.get("per_domain_error"):
        errs = results["per_domain_error"]
        n = len(errs)
        fig, ax = plt.subplots(figsize=(min(max(5, 0.45 * n), 14), 3.5))
        ax.plot(range(n), [100 * (e if e is not None else float("nan")) for e in errs.values()],
                marker="o" if n <= MAX_TICKS else None)
        every = math.ceil(n / MAX_TICKS)
        ax.set_xticks(range(0, n, every), list(errs)[::every], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("error (%)")
        ax.set_title(f"{results['strategy']}: error per domain")
        fig.tight_layout()
        figs["per_domain_error"] = fig
    if results.get("metric") == "loss":
        figs.update(loss_plots(results))
    elif results.get("continual_eval"):
        figs["continual_eval"] = continual_eval_figure(results)
    pngs = {}
    for name, fig in figs.items():
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        pngs[name] = buf.getvalue()
        _atomic(os.path.join(folder, f"{name}.png"), lambda f, data=pngs[name]: f.write(data))
        if on_figure is not None:
            on_figure(name)
    return pngs
