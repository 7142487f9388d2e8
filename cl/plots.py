"""PNG plots of a results dict: accuracy-matrix heatmap, per-domain error, continual-eval curves."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def heatmap(ax, R, title):
    R = np.asarray(R, dtype=float)
    im = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
    for (i, j), v in np.ndenumerate(R):
        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 else "black")
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training on experience")
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
        im = ax.imshow(L, cmap="viridis_r")
        for (i, j), v in np.ndenumerate(L):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
        if len(domains) == L.shape[1]:
            ax.set_xticks(range(L.shape[1]), domains, rotation=30, ha="right", fontsize=7)
            ax.set_yticks(range(L.shape[0]), domains[:L.shape[0]], fontsize=7)
        ax.set_xlabel("evaluated on domain")
        ax.set_ylabel("after training on domain")
        ax.set_title(f"{results['strategy']}: loss (nats/token)")
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
        ax.legend(fontsize=7)
        ax.set_title("continual evaluation (loss)")
        fig.tight_layout()
        figs["continual_eval"] = fig
    return figs


def save_plots(results, folder):
    """Write the plots that apply to ``results`` into ``folder``; returns {name: figure}."""
    from cl.io import _atomic
    os.makedirs(folder, exist_ok=True)
    figs = {}
    if results.get("accuracy_matrix"):
        fig, ax = plt.subplots(figsize=(5, 4))
        im = heatmap(ax, results["accuracy_matrix"], f"{results['strategy']}: accuracy (%)")
        fig.colorbar(im, ax=ax)
        figs["accuracy_matrix"] = fig
    if results.get("domain_accuracy_matrix"):
        fig, ax = plt.subplots(figsize=(6, 5))
        heatmap(ax, results["domain_accuracy_matrix"], f"{results['strategy']}: accuracy per domain (%)")
        figs["domain_accuracy_matrix"] = fig
    if results.get("per_domain_error"):
        errs = results["per_domain_error"]
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(errs)), 3.5))
        ax.plot(range(len(errs)), [100 * e for e in errs.values()], marker="o")
        ax.set_xticks(range(len(errs)), list(errs), rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("error (%)")
        ax.set_title(f"{results['strategy']}: error per domain")
        fig.tight_layout()
        figs["per_domain_error"] = fig
    if results.get("metric") == "loss":
        figs.update(loss_plots(results))
    elif results.get("continual_eval"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        curves = results["continual_eval"]
        n = max(len(c["accuracy"]) for c in curves)
        for j in range(n):
            pts = [(c["step"], c["accuracy"][j]) for c in curves if len(c["accuracy"]) > j]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], label=f"exp {j}")
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
        ax.set_title("continual evaluation")
        fig.tight_layout()
        figs["continual_eval"] = fig
    for name, fig in figs.items():
        _atomic(os.path.join(folder, f"{name}.png"), lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
    return figs
