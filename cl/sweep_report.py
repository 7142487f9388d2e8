"""``cl report SWEEP_DIR``: aggregate a sweep's runs over seeds into tables, plots and HParams.

Writes into ``SWEEP_DIR/report/``:
- ``table.md`` / ``table.tex``: one row per configuration, each metric as mean ± std over seeds,
  in percent (std is the sample standard deviation, ddof=1; blank with a single seed); token
  scenarios' metrics (losses in nats, perplexity) as they are, not in percent;
- ``table.csv``: the same numbers as fractions, as in results.json (``<metric>_mean``,
  ``<metric>_std``), one column per swept key, and the seeds that went in;
- ``plots/``: the main metric per configuration with error bars, the mean accuracy matrices side
  by side (train_eval; loss matrices for token scenarios), the mean error per domain with error bars (online / test-time adaptation);
- ``hparams/``: TensorBoard's HParams view, one entry per run (swept keys + seed -> final metrics).

Only runs whose results.json says "complete" are aggregated; the others are listed as missing.
"""
import csv
import io as _io
import json
import math
import os

import numpy as np

from cl import io
from cl.errors import ClError

MAIN_METRIC = {"train_eval": "average_accuracy", "online": "mean_error", "loss": "average_loss"}


# ---------------------------------------------------------------------------- collect
def load_runs(sweep_dir):
    """[{label, overrides, seed, run_dir, status, results}] from sweep_summary.json (or a folder scan)."""
    path = os.path.join(sweep_dir, "sweep_summary.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                entries = json.load(f)["runs"]
            entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("run_dir"), str)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClError(f"Cannot read {path} ({type(e).__name__}: {e}); it is damaged. Re-run the sweep (complete "
                          "runs are skipped) to rewrite it, or delete it to report from the run folders.") from None
    else:
        entries = []
        for root, _, files in sorted(os.walk(sweep_dir)):
            if "results.json" in files:
                rel = os.path.relpath(root, sweep_dir)
                label = os.path.dirname(rel) or rel
                entries.append({"label": label, "overrides": {}, "seed": None, "run_dir": rel})
    runs = []
    for e in entries:
        results = None
        try:
            with open(os.path.join(sweep_dir, e["run_dir"], "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError):
            pass
        if results is not None and results.get("status") != "complete":
            results = None
        runs.append({**e, "results": results})
    return runs


def aggregate(runs):
    """[{label, overrides, protocol, strategy, seeds, metrics: {name: (mean, std, n)}, R, errors}] in order.

    ``R`` is the mean accuracy matrix over seeds (train_eval), or the mean loss matrix for token scenarios
    (``kind`` "loss": their metrics are losses in nats, not fractions); ``errors`` {domain: (mean, std)}."""
    groups = {}
    for r in runs:
        g = groups.setdefault(r["label"], {"label": r["label"], "overrides": r.get("overrides") or {},
                                           "results": [], "missing": []})
        (g["results"] if r["results"] else g["missing"]).append(r["results"] or r.get("seed"))
    out = []
    for g in groups.values():
        res = g["results"]
        row = {"label": g["label"], "overrides": g["overrides"], "missing": g["missing"],
               "seeds": [r["seed"] for r in res], "protocol": res[0]["protocol"] if res else None,
               "strategy": res[0]["strategy"] if res else None, "metrics": {}, "R": None, "errors": None,
               "kind": "loss" if any(r.get("metric") == "loss" for r in res) else "accuracy"}
        names = []
        for r in res:
            names += [k for k, v in r.get("metrics", {}).items() if _num(v) and k not in names]
        for k in names:
            vals = [r["metrics"][k] for r in res if _num(r.get("metrics", {}).get(k))]
            row["metrics"][k] = mean_std(vals)
        mats = [r.get("loss_matrix" if row["kind"] == "loss" else "accuracy_matrix") for r in res]
        mats = [m for m in mats if m]
        if mats and all(np.shape(m) == np.shape(mats[0]) for m in mats):
            row["R"] = np.mean(np.asarray(mats, dtype=float), axis=0).tolist()
        doms = [r["per_domain_error"] for r in res if r.get("per_domain_error")]
        if doms:
            row["errors"] = {d: mean_std([x[d] for x in doms if _num(x.get(d))])[:2] for d in doms[0]}
        out.append(row)
    return out


def mean_std(values):
    """(mean, sample std (ddof=1; None for one value), n)."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if n > 1 else None
    return mean, std, n


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------- tables
def metric_names(rows):
    names = []
    for row in rows:
        names += [k for k in row["metrics"] if k not in names]
    return names


def swept_keys(rows):
    keys = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    return keys


def short_keys(keys):
    """Swept keys shortened to their last part where that stays unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _value(row, name, pm=" ± ", mixed=False):
    """A metric cell: percentages for accuracy runs, plain values (nats, perplexity) for loss runs;
    ``mixed`` (a table with both kinds): the unit in the cell, since the header cannot carry it."""
    mean, std = row["metrics"].get(name, (None, None, 0))[:2]
    if mean is None:
        return "-"
    scale, digits, unit = (1, 3, "") if row["kind"] == "loss" else (100, 2, "%" if mixed else "")
    return f"{scale * mean:.{digits}f}{unit}" + ("" if std is None else f"{pm}{scale * std:.{digits}f}{unit}")


def _header_unit(rows):
    """' (%)' when every row is an accuracy run, '' when every row is a loss run, None when mixed."""
    kinds = {r["kind"] for r in rows}
    return " (%)" if kinds == {"accuracy"} else "" if kinds == {"loss"} else None


def markdown_table(rows):
    keys, names = swept_keys(rows), metric_names(rows)
    short = short_keys(keys)
    head = [short[k] for k in keys] or ["configuration"]
    unit = _header_unit(rows)
    head += ["seeds"] + [f"{n}{unit or ''}" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["overrides"].get(k, "")) for k in keys] or [row["label"]]
        cells.append(str(len(row["seeds"])) + (f" ({len(row['missing'])} missing)" if row["missing"] else ""))
        cells += [_value(row, n, mixed=unit is None) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(rows):
    keys, names = swept_keys(rows), metric_names(rows)
    short = short_keys(keys)
    head = [_tex(short[k]) for k in keys] or ["configuration"]
    unit = _header_unit(rows)
    head += ["seeds"] + [_tex(n + (unit or "")) for n in names]
    lines = [r"\begin{tabular}{" + "l" * (len(head) - len(names)) + "r" * len(names) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for row in rows:
        cells = [_tex(row["overrides"].get(k, "")) for k in keys] or [_tex(row["label"])]
        cells.append(str(len(row["seeds"])))
        cells += [_tex(_value(row, n, pm=" PM ", mixed=unit is None)).replace(" PM ", r" $\pm$ ") for n in names]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(s):
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, b)
    return s


def csv_table(rows):
    keys, names = swept_keys(rows), metric_names(rows)
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label"] + keys + ["n_seeds", "seeds"] + [f"{n}_{s}" for n in names for s in ("mean", "std")])
    for row in rows:
        vals = []
        for n in names:
            mean, std, _ = row["metrics"].get(n, (None, None, 0))
            vals += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        w.writerow([row["label"]] + [_csv_value(row["overrides"].get(k, "")) for k in keys]
                   + [len(row["seeds"]), " ".join(map(str, row["seeds"]))] + vals)
    return buf.getvalue()


def _csv_value(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


# ---------------------------------------------------------------------------- plots
def save_report_plots(rows, folder):
    """metric.png (error bars), accuracy_matrices.png, domain_errors.png; returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cl.plots import heatmap, loss_heatmap
    os.makedirs(folder, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        io._atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        written.append(path)

    names = [lab for lab in display_labels(rows)]
    for protocol, metric in MAIN_METRIC.items():
        sel = [(n, r) for n, r in zip(names, rows) if metric in r["metrics"]
               and (r["kind"] == "loss" if protocol == "loss" else r["protocol"] == protocol and r["kind"] != "loss")]
        if not sel:
            continue
        scale, unit = (1, "nats") if protocol == "loss" else (100, "%")
        fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(sel) + 2), 3.8))
        means = [scale * r["metrics"][metric][0] for _, r in sel]
        stds = [scale * (r["metrics"][metric][1] or 0) for _, r in sel]
        ax.bar(range(len(sel)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(sel)), [n for n, _ in sel], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(f"{metric} ({unit})")
        ax.set_title(f"{metric}: mean ± std over seeds")
        fig.tight_layout()
        save(fig, f"{metric}.png")
    for kind in ("accuracy", "loss"):
        mats = [(n, r) for n, r in zip(names, rows) if r["R"] and r["kind"] == kind]
        if not mats:
            continue
        fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats), 3.6), squeeze=False)
        for ax, (n, r) in zip(axes[0], mats):
            (heatmap if kind == "accuracy" else loss_heatmap)(ax, r["R"], n)
        fig.tight_layout()
        save(fig, f"{kind}_matrices.png")
    errs = [(n, r) for n, r in zip(names, rows) if r["errors"]]
    if errs:
        doms = list(errs[0][1]["errors"])
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(doms) + 2), 3.8))
        for n, r in errs:
            m = [100 * (r["errors"].get(d, (np.nan, None))[0]) for d in doms]
            s = [100 * (r["errors"].get(d, (0, None))[1] or 0) for d in doms]
            ax.errorbar(range(len(doms)), m, yerr=s, marker="o", capsize=3, label=n)
        ax.set_xticks(range(len(doms)), doms, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("error (%)")
        ax.set_title("error per domain: mean ± std over seeds")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "domain_errors.png")
    return written


def display_labels(rows):
    """Readable configuration names: swept values with short keys (``lr=0.01 name=er``)."""
    keys = swept_keys(rows)
    short = short_keys(keys)
    return [" ".join(f"{short[k]}={r['overrides'][k]}" for k in keys if k in r["overrides"]) or r["label"]
            for r in rows]


# ---------------------------------------------------------------------------- hparams
def write_hparams(runs, folder):
    """One HParams entry per complete run: swept keys + seed + strategy -> final metrics."""
    from torch.utils.tensorboard import SummaryWriter
    os.makedirs(folder, exist_ok=True)
    with SummaryWriter(log_dir=folder) as w:
        for r in runs:
            res = r["results"]
            if not res:
                continue
            hp = {k: _hp_value(v) for k, v in (r.get("overrides") or {}).items()}
            hp.update(seed=res["seed"], strategy=res["strategy"])
            metrics = {f"final/{k}": float(v) for k, v in res.get("metrics", {}).items() if _num(v)}
            w.add_hparams(hp, metrics, run_name=r["run_dir"].replace(os.sep, "_"))


def _hp_value(v):
    return v if isinstance(v, (int, float, str, bool)) else json.dumps(v)


# ---------------------------------------------------------------------------- entry point
def report_sweep(sweep_dir, out=None, hparams=True, echo=print):
    """Write the tables, plots and HParams of a sweep folder; returns 0 (exit status)."""
    runs = load_runs(sweep_dir)
    if not any(r["results"] for r in runs):
        raise ClError(f"No complete run (results.json with status 'complete') under {sweep_dir}. Pass a run folder "
                      "or a sweep folder made by `cl sweep`, or (re)run the sweep first.")
    rows = aggregate(runs)
    out = out or os.path.join(sweep_dir, "report")
    md = markdown_table(rows)
    io.write_text(os.path.join(out, "table.md"), md)
    io.write_text(os.path.join(out, "table.csv"), csv_table(rows))
    io.write_text(os.path.join(out, "table.tex"), latex_table(rows))
    io.write_json(os.path.join(out, "aggregate.json"),
                  [{k: row[k] for k in ("label", "overrides", "protocol", "strategy", "seeds", "metrics")}
                   for row in rows])
    save_report_plots(rows, os.path.join(out, "plots"))
    if hparams:
        write_hparams(runs, os.path.join(out, "hparams"))
    echo(md)
    missing = sum(len(r["missing"]) for r in rows)
    if missing:
        echo(f"{missing} run(s) not complete are left out (see sweep_summary.json).")
    echo(f"Report written to {out} (table.md, table.csv, table.tex, plots/, hparams/: "
         f"tensorboard --logdir {os.path.join(out, 'hparams')})")
    return 0
