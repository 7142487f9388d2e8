"""Every test-time adaptation method of the platform on one reduced CIFAR-10-C (JPEG copy) stream.

Issue 16, item 5. All methods run through ``cl.runner.run`` on the same stream (generated once,
``benchmarks.tta_cifar10c.register_cached_stream``): the 15 corruptions at severity 5, continual
(no reset), each domain shuffled with seed 0 and cut to its first ``--n`` images, the shared
CIFAR-10 ResNet-20 (``cifar_resnet20``, ../shared weights), each method with its own CIFAR-10-C
defaults (batch 200 for the batch methods). Labelled source data (the JPEG copy's train split,
a seeded subset of ``--source-samples`` images) is attached for every method; only the methods
that use it read it (RMT, EATA's Fisher, SANTA, GTTA, LSA). Then the label-shift part: LSA, ROID,
LAME and Tent (and source) on the same corruptions with imbalanced class counts per domain
(``label_shift=long_tailed``, imbalance ratio ``--imbalance``, a seeded class order per domain)
and Dirichlet priors (``label_shift=dirichlet``, concentration ``--concentration``); error and
balanced (mean per-class) error.

    python -m benchmarks.tta_all_methods [--n 100] [--source-samples 5000] [--threads 2] [--skip-label-shift]

Reductions for a ~10-minute run on 2 shared CPU cores (say so wherever the numbers are quoted):
``--n`` images per domain instead of 10,000; RMT's source warm-up on ``--source-samples`` images
(its default is 50,000); TTAug and MEMO are fed batches of ``--n`` (both treat every image on its
own, so the result is the same as batch 1: ``strategies/ttaug.py``, ``strategies/memo.py``).
Excluded: ITTA (a domain-generalization method: it trains the network on several source domains
first; see ``benchmarks/itta_dg.py``) and the CLIP methods (TPT, DiffTPT).
"""
import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

from cl.config import load_config
from cl.registry import STRATEGIES, load_builtins
from cl.runner import run
from benchmarks.tta_cifar10c import SHARED, SHORT, overrides, register_cached_stream

# (row label, strategy name, extra overrides)
METHODS = [
    ("source", "source", []), ("bn (BN-1)", "bn", []), ("bn alpha", "bn", ["strategy.stats=alpha"]),
    ("bn ema", "bn", ["strategy.stats=ema"]), ("tent", "tent", []), ("eata", "eata", []),
    ("eta", "eata", ["strategy.fisher_alpha=0"]), ("sar", "sar", []), ("rpl", "rpl", []), ("deyo", "deyo", []),
    ("roid", "roid", []), ("cmf", "cmf", []), ("lame", "lame", []), ("rotta", "rotta", []),
    ("mean_teacher", "mean_teacher", []), ("cotta", "cotta", []), ("rmt", "rmt", []), ("santa", "santa", []),
    ("gtta", "gtta", []), ("adacontrast", "adacontrast", []), ("ttaug", "ttaug", ["BATCH_N"]),
    ("memo", "memo", ["BATCH_N"]), ("lsa (tent)", "lsa", []),
]
LABEL_SHIFT = [("source", "source", []), ("tent", "tent", []), ("lame", "lame", []), ("roid", "roid", []),
               ("lsa (source)", "lsa", ["strategy.base=source"]), ("lsa (bn)", "lsa", ["strategy.base=bn"]),
               ("lsa (tent)", "lsa", [])]


def share_datasets():
    """Decode each clean dataset once per process: every stream (continual, label-shifted) and its
    source read the same train/test splits, so the JPEG copy is not decoded again for each stream."""
    import functools
    import scenarios.corruption_sources as cso
    import scenarios.corruption_stream as cs
    original = cs.load_dataset
    memo = functools.lru_cache(maxsize=4)(lambda name, root, download, seed: original(
        name, root=root, download=download, seed=seed))
    shared = lambda name, root="data", download=False, seed=0: memo(name, root, download, seed)  # noqa: E731
    cs.load_dataset = cso.load_dataset = shared


def run_one(args, label, method, extra, out_dir, scenario_extra=(), prefix=""):
    ns = SimpleNamespace(**{**vars(args), "corruptions": args.corruptions})
    over = overrides(ns, method, out_dir)
    over = [o for o in over if not o.startswith("scenario.with_source=")] + [
        "scenario.with_source=true", f"scenario.source_samples={args.source_samples}", *scenario_extra]
    for e in extra:
        over.append(f"strategy.batch_size={args.n}" if e == "BATCH_N" else e)
    if method == "rmt":
        over.append(f"strategy.warmup_samples={args.source_samples}")
    tag = prefix + label.replace(" ", "_").replace("(", "").replace(")", "")
    t0 = time.perf_counter()
    res = run(load_config(None, over + [f"name={tag}"]), os.path.join(out_dir, tag))
    wall = time.perf_counter() - t0
    bs = res["config"]["strategy"]["batch_size"]
    per_exp = sorted(res["timings"].get("per_experience_s") or [res["timings"]["train_s"] / len(res["domains"])])
    n_exp = args.n * len(res["domains"]) if "scenario.setting=mixed_domains" in scenario_extra else args.n
    spb = per_exp[len(per_exp) // 2] / -(-n_exp // bs)      # median experience (warm-ups are outside them)
    row = {"per_domain": res["per_domain_error"], "mean": res["metrics"]["mean_error"],
           "balanced": res["metrics"].get("balanced_error"), "s_per_batch": spb,
           "batch": bs, "wall_s": wall}
    print(f"{label}: mean error {100 * row['mean']:.1f}%  ({wall:.0f} s)", flush=True)
    return row


def table(title, rows, with_balanced=False):
    domains = list(next(iter(rows.values()))["per_domain"])
    head = ["method"] + [SHORT.get(d.split("/")[0], d) for d in domains] + ["mean"]
    head += ["balanced"] if with_balanced else []
    head += ["batch", "s/batch"]
    lines = [title, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        cells = [f"{100 * r['per_domain'][d]:.1f}" for d in domains] + [f"**{100 * r['mean']:.1f}**"]
        cells += [f"{100 * r['balanced']:.1f}" if r["balanced"] is not None else "-"] if with_balanced else []
        cells += [str(r["batch"]), f"{r['s_per_batch']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(SHARED, "data", "cifar10-jpeg"))
    p.add_argument("--checkpoint", default=os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th"))
    p.add_argument("--frost-dir", default=os.path.join(SHARED, "data", "frost"))
    p.add_argument("--n", type=int, default=100, help="images per corruption (default 100)")
    p.add_argument("--source-samples", type=int, default=5000)
    p.add_argument("--corruptions", nargs="+", default=None, help="default: the standard 15, in order")
    p.add_argument("--methods", nargs="+", default=None, help="row labels to run (default: all)")
    p.add_argument("--skip", nargs="+", default=[], help="row labels to leave out")
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--concentration", type=float, default=0.1)
    p.add_argument("--settings", nargs="+", default=["continual"],
                   choices=["continual", "reset_each_shift", "mixed_domains"],
                   help="stream settings of the all-methods table (default: continual); mixed_domains mixes "
                   "the same --n images per corruption into one shuffled stream")
    p.add_argument("--skip-label-shift", action="store_true")
    p.add_argument("--only-label-shift", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None, help="write all rows to this file")
    args = p.parse_args(argv)
    load_builtins()
    register_cached_stream()
    share_datasets()
    out_dir = args.out or tempfile.mkdtemp(prefix="tta_all_")
    t_all = time.perf_counter()
    pick = [m for m in METHODS if (args.methods is None or m[0] in args.methods) and m[0] not in args.skip
            and m[1] in STRATEGIES.names()]
    out = {}
    if not args.only_label_shift:
        n_dom = len(args.corruptions or SHORT)
        for setting in args.settings:
            sc = [f"scenario.setting={setting}"]
            if setting == "mixed_domains":           # n_examples counts the whole mixed stream
                sc.append(f"scenario.n_examples={args.n * n_dom}")
            prefix = "" if setting == "continual" else setting + "_"
            rows = {label: run_one(args, label, m, extra, out_dir, sc, prefix=prefix) for label, m, extra in pick}
            out[setting] = rows
            print("\n" + table(f"CIFAR-10-C (JPEG copy) severity 5, {setting}, ResNet-20, n={args.n} per corruption; "
                               "error %", rows), flush=True)
            if args.json:                            # partial results survive a long run being stopped
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
    if not args.skip_label_shift:
        shifts = {f"long_tailed (ratio {args.imbalance:g}, class order per domain)":
                  ["scenario.label_shift=long_tailed", f"scenario.imbalance_ratio={args.imbalance}",
                   "scenario.label_order=per_domain"],
                  f"dirichlet (concentration {args.concentration:g} per domain)":
                  ["scenario.label_shift=dirichlet", f"scenario.label_concentration={args.concentration}"]}
        for name, sc_extra in shifts.items():
            ls_rows = {label: run_one(args, label, m, extra, out_dir, sc_extra, prefix=name.split()[0] + "_")
                       for label, m, extra in LABEL_SHIFT
                       if (args.methods is None or label in args.methods) and label not in args.skip}
            out[name] = ls_rows
            print("\n" + table(f"Label shift: {name}, n={args.n} per corruption; error % and balanced error %",
                               ls_rows, with_balanced=True))
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; runs in {out_dir}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
