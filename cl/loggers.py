"""Run outputs: config.yaml, results.json, metrics.csv, TensorBoard events, PNG plots, console table.

Every file is written atomically (cl.io), so a killed run never leaves a half-written file.
"""
import csv
import io as _io
import math
import os
import platform

import numpy as np

from cl import io, rundir
from cl.config import to_yaml


def library_versions():
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "timm", "numpy", "omegaconf"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


class RunLogger:
    """Writes everything a run produces into its run folder."""

    def __init__(self, run_dir, cfg, scenario):
        self.run_dir, self.cfg, self.scenario = run_dir, cfg, scenario
        os.makedirs(run_dir, exist_ok=True)
        if not os.path.isfile(os.path.join(run_dir, "config.yaml")):   # cl.rundir.open_run writes it first
            io.write_text(os.path.join(run_dir, "config.yaml"), to_yaml(cfg))
        self.resumes = rundir.read_marker(run_dir).get("resumes") or []
        self.tb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=run_dir, max_queue=100, flush_secs=30)

    def scalar(self, tag, value, step):
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def experience(self, i, state, seen):
        """After experience ``i``: its accuracy row; ``seen`` are the task columns trained so far."""
        row = state.R[-1]
        metric = getattr(self.scenario, "metric", "accuracy")    # accuracy | loss (token scenarios)
        self.scalar(f"eval/average_{metric}", float(np.mean([row[j] for j in seen])), i)
        for j, acc in enumerate(row):
            self.scalar(f"eval/{metric}_task{j}", acc, i)
        for c in state.curves:
            if c["experience"] == i:
                for j, acc in enumerate(c[metric]):
                    self.scalar(f"continual_eval/task{j}", acc, c["step"])
        steps = {c["step"] for c in state.curves if c["experience"] == i}
        if steps:
            from cl.continual_metrics import wc_acc_series
            curves = state.curves if metric == "accuracy" else [{**c, "accuracy": c[metric]} for c in state.curves]
            for step, value in wc_acc_series(curves, higher_is_better=metric == "accuracy"):
                if step in steps:
                    self.scalar("continual_eval/wc_acc", value, step)

    def domain(self, d, state):
        total = state.domain_total[d]
        if total:
            self.scalar("online/error", 1 - state.domain_correct[d] / total, d)

    def write_results(self, results):
        if self.resumes:                  # what changed at each --resume (device, threads, logging)
            results = {**results, "resumes": self.resumes}
        io.write_json(os.path.join(self.run_dir, "results.json"), _clean(results))
        io.write_text(os.path.join(self.run_dir, "metrics.csv"), metrics_csv(results))

    def finish(self, results):
        """Final results, plots, TensorBoard figures and the console table.

        Costs one rendering per figure kind whatever the stream's length (the TensorBoard images
        are the PNGs already rendered); a progress bar shows the steps when logging.progress."""
        from tqdm import tqdm
        plots = self.cfg.logging.plots
        n_plots = len(_plot_kinds(results)) if plots else 0
        bar = tqdm(total=1 + n_plots + (self.tb is not None), desc="closing the run", leave=False,
                   disable=not self.cfg.logging.progress)
        self.write_results(results)
        bar.update()
        pngs = {}
        if plots:
            from cl.plots import save_plots
            pngs = save_plots(results, os.path.join(self.run_dir, "plots"),
                              on_figure=lambda name: (bar.set_postfix_str(name), bar.update()))
        if self.tb is not None:
            for name, png in pngs.items():
                self.tb.add_image(f"plots/{name}", _decode_png(png), 0, dataformats="HWC")
            for k, v in results.get("metrics", {}).items():
                if isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"final/{k}", v, 0)
            bar.set_postfix_str("TensorBoard")
            bar.update()
        bar.close()
        self.close()
        if self.cfg.logging.console:
            print(format_table(results))
            print(f"Run folder: {self.run_dir}")

    def close(self):
        """Close the TensorBoard writer and release the run folder's lock (cl.rundir)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        rundir.release(self.run_dir)


def _plot_kinds(results):
    return [k for k in ("accuracy_matrix", "map_matrix", "domain_accuracy_matrix", "per_domain_error", "continual_eval",
                        "loss_matrix") if results.get(k)]


def _decode_png(data):
    """PNG bytes -> uint8 array [H, W, 3] (for TensorBoard, without rendering the figure again)."""
    from PIL import Image
    with Image.open(_io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _clean(obj):
    """JSON-safe: NaN/inf -> None, tensors/numpy -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def metrics_csv(results):
    """Long format: metric, after_experience, experience, value."""
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "after_experience", "experience", "value"])
    for name in ("accuracy_matrix", "task_il_accuracy_matrix", "domain_accuracy_matrix", "loss_matrix",
                 "perplexity_matrix", "map_matrix"):
        for i, row in enumerate(results.get(name) or []):
            for j, v in enumerate(row):
                w.writerow([name.replace("_matrix", ""), i, j, v])
    for dom, err in (results.get("per_domain_error") or {}).items():
        w.writerow(["error", "", dom, err])
    for k, v in (results.get("metrics") or {}).items():
        w.writerow([k, "", "", v])
    return buf.getvalue()


def _fmt(v, pct=True):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:6.2f}" if pct else f"{v:.4f}"


def continual_table(results):
    """Per-task continual-evaluation lines (min-ACC, WF/WP over 10 evaluations, first gap), or []."""
    d = results.get("continual_metrics") or {}
    if not d.get("min_acc") and not d.get("first_gap"):
        return []
    curves = results.get("continual_eval") or []
    pct = results.get("metric") != "loss"          # loss curves: nats, worst = highest
    lines = [f"Continual evaluation ({len(curves)} records; gap = first drop after the task was learned):",
             f"  {'task':<5s}{'min-ACC':>9s}{'WF10':>8s}{'WP10':>8s}{'gap depth':>11s}  gap length (steps)"]
    for j, m in enumerate(d.get("min_acc") or []):
        gap = (d.get("first_gap") or [None] * (j + 1))[j] or {}
        length = gap.get("length")
        length = "-" if not gap else ("not recovered" if length is None else str(length))
        wf, wp = ((d.get(k) or [None] * (j + 1))[j] for k in ("wf10", "wp10"))
        lines.append(f"  {j:<5d}{_fmt(m, pct):>9s}{_fmt(wf, pct):>8s}{_fmt(wp, pct):>8s}"
                     f"{_fmt(gap.get('depth'), pct):>11s}  {length}")
    return lines


def format_table(results):
    """The console table: accuracy matrix (or per-domain error) and the metrics, in percent."""
    lines = [f"{results['strategy']} on {results['scenario']} (seed {results['seed']}, "
             f"{results['status']})"]
    R = results.get("accuracy_matrix")
    if R:
        T = len(R[0])
        lines.append("Accuracy matrix (%), row = after training on experience i, column = test on j:")
        lines.append("        " + "".join(f"  exp{j:<3d}" for j in range(T)))
        for i, row in enumerate(R):
            lines.append(f"  exp{i:<3d}" + "".join(f" {_fmt(v)} " for v in row))
    M = results.get("map_matrix")
    if M:
        lines.append("mAP matrix (%), row = after training on experience i, column = mAP of task j's classes on "
                     "its test images:")
        lines.append("        " + "".join(f"  exp{j:<3d}" for j in range(len(M[0]))))
        for i, row in enumerate(M):
            lines.append(f"  exp{i:<3d}" + "".join(f" {_fmt(v)} " for v in row))
        steps = results.get("map_per_step") or []
        lines.append("  after exp   mAP     CF1     OF1   (seen classes, test images holding one of them)")
        for i, (a, b, c) in enumerate(zip(steps, results.get("cf1_per_step") or [], results.get("of1_per_step") or [])):
            lines.append(f"  {i:<9d}{_fmt(a)}  {_fmt(b)}  {_fmt(c)}")
    L = results.get("loss_matrix")
    if L:
        names = [t["name"][:10] for t in results.get("tasks", [])] or [f"exp{j}" for j in range(len(L[0]))]
        lines.append("Loss matrix (nats/token; perplexity = exp), row = after training on domain i, column = "
                     "evaluated on j:")
        lines.append("            " + "".join(f" {n:>10s}" for n in names))
        for i, row in enumerate(L):
            lines.append(f"  {names[i]:>10s}" + "".join(f" {_fmt(v, pct=False):>10s}" for v in row))
        pct = False
    else:
        pct = True
    errs = results.get("per_domain_error")
    if errs:
        lines.append("Error per domain (%):")
        width = max(len(d) for d in errs)
        lines.extend(f"  {d:<{width}s} {_fmt(e)}" for d, e in errs.items())
    lines.extend(continual_table(results))
    for k, v in (results.get("metrics") or {}).items():
        lines.append(f"  {k:<32s} {_fmt(v, pct)}")
    t = results.get("timings", {})
    if "total_s" in t:
        lines.append(f"  time: {t['total_s']:.1f} s (train/adapt {t['train_s']:.1f} s, eval {t['eval_s']:.1f} s)")
    if "tokens_per_s" in t:
        lines.append(f"  training throughput: {t['tokens_per_s']:,.0f} tokens/s ({t['train_tokens']:,} tokens)")
    return "\n".join(lines)
