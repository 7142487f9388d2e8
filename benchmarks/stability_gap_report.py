"""Figure and table of stability-gap runs: one panel per run (accuracy on each task vs step,
boundaries dashed, min-ACC dotted, lr below when it changes) and a markdown table of the
continual-evaluation metrics, from the run folders of ``cl reproduce`` (or any runs with eval_every).

    python -m benchmarks.stability_gap_report runs/reproduce/stability_gap_splitmnist_er \\
        --out docs/figures/stability_gap_er.png
"""
import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cl.plots import draw_continual_eval  # noqa: E402


def load_runs(folders):
    """[(label, results)] of every results.json under the folders (label = the run's folder name)."""
    out = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True)):
            with open(path) as f:
                res = json.load(f)
            if res.get("continual_eval"):
                rel = os.path.relpath(os.path.dirname(path), folder).split(os.sep)
                out.append((rel[0] if rel[0] != "." else res["strategy"], res))
    return out


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


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
    args = p.parse_args(argv)
    runs = load_runs(args.folders)
    if not runs:
        raise SystemExit(f"no results.json with continual evaluation under {', '.join(args.folders)}")
    print(table(runs))
    if args.out:
        figure(runs, args.out)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
