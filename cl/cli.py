"""The ``cl`` command: run, list, report (and the sweep/reproduce/bench commands when present).

User errors (bad config, missing data, NaN loss) print one paragraph and exit with status 2;
``--debug`` shows the traceback instead.
"""
import argparse
import json
import os
import sys

from cl.errors import ClError


def cmd_run(args):
    from cl.config import load_config
    from cl.rundir import new_run_dir
    from cl.runner import run
    if args.resume:
        cfg_path = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise ClError(f"Cannot resume: {cfg_path} does not exist. Pass the run folder that holds config.yaml.")
        cfg = load_config(cfg_path, args.overrides)
        run_dir = args.resume
    else:
        if not args.config:
            raise ClError("cl run needs an experiment file, e.g. `cl run experiments/quickstart.yaml`, or --resume RUN_DIR.")
        cfg = load_config(args.config, args.overrides)
        run_dir = new_run_dir(cfg.output_dir, cfg.name)
    run(cfg, run_dir, resume=bool(args.resume))
    return 0


def cmd_list(args):
    from cl.registry import AUGMENTATIONS, DATASETS, MODELS, SCENARIOS, STRATEGIES, load_builtins
    load_builtins()
    import cl.augment  # noqa: F401  (registers the built-in augmentations)
    for title, reg in (("strategies", STRATEGIES), ("scenarios", SCENARIOS), ("models", MODELS),
                       ("datasets (scenario.dataset)", DATASETS), ("augmentations (scenario.augment)", AUGMENTATIONS)):
        print(f"{title}:")
        for name, desc in reg.describe():
            print(f"  {name:<22s} {desc}")
    print("models also: timm/<any timm model name>")
    return 0


def cmd_report(args):
    from cl.loggers import format_table
    from cl.plots import save_plots
    path = os.path.join(args.run_dir, "results.json")
    if not os.path.isfile(path):
        from cl import sweep_report
        if os.path.isdir(args.run_dir) and hasattr(sweep_report, "report_sweep"):
            return sweep_report.report_sweep(args.run_dir)
        raise ClError(f"No results.json in {args.run_dir}.")
    with open(path) as f:
        results = json.load(f)
    print(format_table(results))
    save_plots(results, os.path.join(args.run_dir, "plots"))
    print(f"Plots written to {os.path.join(args.run_dir, 'plots')}")
    return 0


def make_parser():
    p = argparse.ArgumentParser(prog="cl", description="Continual learning / test-time adaptation runs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment: cl run EXPERIMENT.yaml [key=value ...]")
    r.add_argument("config", nargs="?", help="experiment YAML")
    r.add_argument("overrides", nargs="*", help="config overrides, e.g. strategy.lr=0.01 seed=3")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.set_defaults(func=cmd_run)
    ls = sub.add_parser("list", help="list registered strategies, scenarios, models and datasets")
    ls.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="re-render the table and plots from a run folder's results.json")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)
    for extra in ("cl.sweep", "cl.reproduce"):
        try:
            mod = __import__(extra, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
