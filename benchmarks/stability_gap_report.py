"""Figure and table of stability-gap runs: one panel per run (accuracy on each task vs step,
boundaries dashed, min-ACC dotted, lr below when it changes) and a markdown table of the
continual-evaluation metrics, from the run folders of ``cl reproduce`` (or any runs with eval_every).
Runs of the same label (the first folder under the given one) and several seeds are averaged in
the table (mean ± standard deviation, n); the figure shows one seed (``--figure-seed``, default the
lowest).

    python -m benchmarks.stability_gap_report runs/reproduce/stability_gap_splitmnist_er \\
        --out docs/figures/stability_gap_er.png
"""
import argparse
import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cl.plots import draw_continual_eval  # noqa: E402


def load_runs(folders):
    """[(label, results)] of every complete results.json with continual evaluation under the folders
    (label = the first folder below the given one, e.g. the strategy label of a reproduce run)."""
    out = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True)):
            with open(path) as f:
                res = json.load(f)
            if res.get("continual_eval") and res.get("status") == "complete":
                rel = os.path.relpath(os.path.dirname(path), folder).split(os.sep)
                out.append((rel[0] if rel[0] != "." else res["strategy"], res))
    return out


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def pct_sd(values):
    """'mean' for one value, 'mean ± sd (n)' for several (percent)."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return pct(values[0] if values else None)
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f} ({len(values)})"


def seed_table(runs):
    """Mean ± sd over the seeds of each label: final accuracy, min-ACC, WC-ACC, WF10, gap depth."""
    labels = list(dict.fromkeys(label for label, _ in runs))
    keys = ("average_accuracy", "min_acc", "wc_acc", "wf10", "wp10", "gap_depth")
    lines = ["| run | final avg acc | min-ACC | WC-ACC | WF10 | WP10 | gap depth |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        ms = [res["metrics"] for lab, res in runs if lab == label]
        lines.append(f"| {label} | " + " | ".join(pct_sd([m.get(k) for m in ms]) for k in keys) + " |")
    return "\n".join(lines)


def table(runs):
    lines = ["| run | final avg acc | min-ACC | WC-ACC | WF10 | WP10 | gap depth | task 0's first gap: depth, "
             "recovered by the experience end, steps back to the boundary value | cont. eval / train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, res in runs:
        m, d, t = res["metrics"], res["continual_metrics"], res["timings"]
        g0 = (d.get("first_gap") or [None])[0] or {}
        rec = "-" if not g0 else ("not recovered" if g0["length"] is None else str(g0["length"]))
        ce = t.get("continual_eval_s", 0.0)
        lines.append(f"| {label} | {pct(m['average_accuracy'])} | {pct(m['min_acc'])} | {pct(m['wc_acc'])} | "
                     f"{pct(m['wf10'])} | {pct(m['wp10'])} | {pct(m['gap_depth'])} | "
                     f"{pct(g0.get('depth'))}, {pct(g0.get('recovered_fraction'))}%, {rec} | "
                     f"{ce / max(t['train_s'] - ce, 1e-9):.2f} |")
    return "\n".join(lines)


def figure(runs, path, cols=2):
    rows = -(-len(runs) // cols)
    with_lr = any(len({round(v, 12) for _, v in res.get("lr") or []}) > 1 for _, res in runs)
    ratios = [3, 1] * rows if with_lr else [1] * rows
    fig, axes = plt.subplots(len(ratios), cols, figsize=(6.5 * cols, sum(ratios) * (1.0 if with_lr else 3.4)),
                             gridspec_kw={"height_ratios": ratios}, squeeze=False)
    step = 2 if with_lr else 1
    for k, (label, res) in enumerate(runs):
        r, c = divmod(k, cols)
        ax, ax_lr = axes[step * r][c], (axes[step * r + 1][c] if with_lr else None)
        draw_continual_eval(ax, res, ax_lr)
        ax.set_title(f"{label}: min-ACC {pct(res['metrics']['min_acc'])}, WC-ACC {pct(res['metrics']['wc_acc'])}",
                     fontsize=9)
    for k in range(len(runs), rows * cols):
        r, c = divmod(k, cols)
        for i in range(step):
            axes[step * r + i][c].axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="run folders (searched recursively for results.json)")
    p.add_argument("--out", help="write the figure here (PNG)")
    p.add_argument("--figure-seed", type=int, help="the seed whose runs the figure and per-run table show")
    args = p.parse_args(argv)
    runs = load_runs(args.folders)
    if not runs:
        raise SystemExit(f"no complete results.json with continual evaluation under {', '.join(args.folders)}")
    seed = min(res["seed"] for _, res in runs) if args.figure_seed is None else args.figure_seed
    one = [(label, res) for label, res in runs if res["seed"] == seed]
    if len(one) < len(runs):
        print(seed_table(runs))
        print(f"\nseed {seed}:")
    print(table(one))
    if args.out:
        figure(one, args.out)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
