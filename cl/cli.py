"""The ``cl`` command: run, list, report (and the sweep/reproduce/bench commands when present).

Every error a user can cause (bad config or command line, missing or unreadable data, bad
checkpoint, NaN loss, full disk) prints one paragraph and exits with status 2; ``--debug`` shows
the traceback instead. Ctrl-C or SIGTERM stops a run with results.json saying "interrupted" and a
message that says how to resume it (exit 130 / 143).
"""
import argparse
import json
import os
import signal
import sys

from cl.errors import ClError, OutputError, one_paragraph


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are ClErrors (one paragraph, exit 2) instead of usage dumps."""

    def error(self, message):
        raise ClError(f"{message[0].upper()}{message[1:]} ({self.prog}). See `{self.prog} --help`.")


def launch_ranks(args):
    """``cl run --nproc N ...``: the same command under torchrun with N ranks on this machine."""
    import subprocess
    if args.nproc < 1:
        raise ClError(f"--nproc must be at least 1, got {args.nproc}.")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "cl", "run", *([args.config] if args.config else []), *args.overrides,
           *(["--resume", args.resume] if args.resume else [])]
    return subprocess.call(cmd)


def cmd_run(args):
    from cl import distributed as ddp
    from cl.config import load_config, to_yaml
    if args.nproc and args.nproc != 1 and not ddp.launched():
        return launch_ranks(args)
    from cl.rundir import discard_unused, new_run_dir
    from cl.runner import run
    if args.resume:
        overrides = list(args.overrides)
        if args.config:                      # `cl run --resume DIR key=value`: argparse took it as the file
            if "=" not in args.config:
                raise ClError(f"`cl run --resume {args.resume}` takes no experiment file ('{args.config}'): the run "
                              "continues the config stored in its folder. Pass only key=value overrides.")
            overrides.insert(0, args.config)
        run_dir = args.resume
        if not os.path.isdir(run_dir):
            raise ClError(f"Cannot resume: {run_dir} is not a folder. Pass the run folder that holds config.yaml.")
        cfg_path = os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise ClError(f"Cannot resume: {cfg_path} does not exist. Pass the run folder that holds config.yaml.")
        cfg = load_config(cfg_path, overrides)
        if ddp.launched():
            ddp.init(cfg.device)      # torchrun: join the process group (docs/distributed.md)
    else:
        if not args.config:
            raise ClError("cl run needs an experiment file, e.g. `cl run experiments/quickstart.yaml`, or --resume RUN_DIR.")
        cfg = load_config(args.config, args.overrides)
        if ddp.launched():
            ddp.init(cfg.device)
        run_dir = ddp.main_first(lambda: new_run_dir(cfg.output_dir, cfg.name, to_yaml(cfg)))   # rank 0's, for all
    try:
        run(cfg, run_dir, resume=bool(args.resume))
    except KeyboardInterrupt:
        if ddp.is_main() and (args.resume or not discard_unused(run_dir)):
            print(f"interrupted: {run_dir} keeps the results of the finished experiences (status "
                  f"\"interrupted\"{_done(run_dir)}). Continue it with: cl run --resume {run_dir}", file=sys.stderr)
        raise
    except OutputError as e:
        raise OutputError(f"{e} Everything written before is intact{_done(run_dir)}; once the problem is fixed, "
                          f"continue with: cl run --resume {run_dir}", e.path, e.disk_full) from None
    except BaseException:
        if not args.resume and ddp.is_main():
            discard_unused(run_dir)          # failed before writing anything: leave no empty folder behind
        raise
    return 0


def _done(run_dir):
    """', N of M experiences done' from the run's results.json ('' when unreadable)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            res = json.load(f)
        return f", {res['completed_experiences']} of {res['num_experiences']} experiences done"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


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


REQUIRED_RESULTS = ("strategy", "scenario", "seed", "status")


def cmd_report(args):
    from cl.loggers import format_table
    from cl.plots import save_plots
    path = os.path.join(args.run_dir, "results.json")
    if not os.path.isfile(path):
        from cl import sweep_report
        if os.path.isdir(args.run_dir) and hasattr(sweep_report, "report_sweep"):
            return sweep_report.report_sweep(args.run_dir)
        raise ClError(f"No results.json in {args.run_dir}. Pass a run folder (or a sweep folder).")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise ClError(f"Cannot read {path}: {type(e).__name__}: {one_paragraph(e)}. The file is damaged; the run's "
                      "checkpoint can rebuild it: cl run --resume " + args.run_dir) from None
    missing = [k for k in REQUIRED_RESULTS if not isinstance(results, dict) or k not in results]
    if missing:
        raise ClError(f"{path} is not the results of a cl run (it lacks {', '.join(missing)}).")
    print(format_table(results))
    folder = os.path.join(args.run_dir, "plots")
    try:
        save_plots(results, folder)
    except OSError as e:
        raise OutputError.of(folder, e) from None
    print(f"Plots written to {folder}")
    return 0


def make_parser():
    p = Parser(prog="cl", description="Continual learning / test-time adaptation runs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment: cl run EXPERIMENT.yaml [key=value ...]")
    r.add_argument("config", nargs="?", help="experiment YAML")
    r.add_argument("overrides", nargs="*", help="config overrides, e.g. strategy.lr=0.01 seed=3")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint "
                   "(overrides: only name, output_dir, device, threads, save_model, logging.*)")
    r.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="data-parallel over N processes on this machine (starts torchrun; docs/distributed.md)")
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


def _rank():
    """This process's rank under torchrun (0 otherwise), also before the process group is joined."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)   # SIGTERM stops a run as Ctrl-C does
    except ValueError:                                          # not the main thread
        previous = None
    try:
        args = make_parser().parse_args(argv)
        return args.func(args)
    except ClError as e:
        if debug:
            raise
        if _rank() == 0:                                        # torchrun: one message, not one per rank
            print(f"error: {one_paragraph(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        term = "SIGTERM" in str(e)
        print("terminated" if term else "interrupted", file=sys.stderr)
        return 143 if term else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
