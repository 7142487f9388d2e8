"""``cl sweep SWEEP.yaml``: a base experiment x (a list of overrides and/or a grid) x seeds.

The sweep file is described in ``cl.sweep.spec``; ``cl.sweep.plan`` turns it into jobs;
``cl.sweep.engines`` runs them. This module decides which jobs still need to run, keeps
``sweep_summary.json`` and is the command line.

Every run gets a deterministic folder ``SWEEP_DIR/<label>/seed<seed>``, the label made from the
override set (``strategy.lr-0.01__strategy.name-er``, sanitized). Re-running a sweep skips runs
whose results.json says "complete" and resumes the others from their checkpoint. A failing run
is recorded (error + traceback in ``sweep_summary.json`` and ``<run>/error.log``) and the others
go on; the exit status is the number of failed runs (capped at 125).

Engines: ``local`` runs ``--workers`` processes on this machine (one GPU each, round-robin, when
GPUs exist); ``ray`` submits each run as a Ray task with ``--cpus-per-run``/``--gpus-per-run``;
``slurm`` submits each run as a SLURM job through submitit (cl/sweep/slurm.py).
"""
import copy
import json
import os
import time

import yaml

from cl import io
from cl.errors import ConfigError, did_you_mean
from cl.rundir import sanitize_name
from cl.sweep.engines import run_local, run_ray
from cl.sweep.plan import flatten, plan
from cl.sweep.spec import load_spec

__all__ = ["SUMMARY", "run_sweep", "cmd_sweep", "report_exit", "add_parser", "is_complete", "check_same_config"]

SUMMARY = "sweep_summary.json"
ENGINES = ["local", "ray", "slurm"]


# ---------------------------------------------------------------------------- what is left to run
def is_complete(run_dir):
    """True when run_dir/results.json exists and says status "complete"."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return json.load(f).get("status") == "complete"
    except (OSError, ValueError):
        return False


def check_same_config(job, run_dir):
    """A ConfigError when run_dir already holds a run of a different config (the sweep file changed)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = yaml.safe_load(f) or {}
    new = job["config"]
    diff = [k for k in sorted(set(flatten(old)) | set(flatten(new)))
            if not k.startswith("logging.") and flatten(old).get(k) != flatten(new).get(k)]
    if diff:
        shown = ", ".join(f"{k}: {flatten(old).get(k)!r} -> {flatten(new).get(k)!r}" for k in diff[:5])
        raise ConfigError(f"Run folder {run_dir} holds a run of a different config ({shown}). The sweep file or "
                          "the overrides changed since it ran: write to a new folder with --out DIR, or delete "
                          "that run folder to rerun it.")



# ---------------------------------------------------------------------------- the sweep
def run_sweep(jobs, sweep_dir, engine="local", workers=1, address=None, cpus_per_run=1, gpus_per_run=None,
              meta=None, echo=print, slurm=None):
    """Run the jobs not yet complete; write ``sweep_summary.json``; return the summary dict."""
    check_resources(engine, workers, cpus_per_run, gpus_per_run)
    os.makedirs(sweep_dir, exist_ok=True)
    for job in jobs:
        check_same_config(job, os.path.join(sweep_dir, job["run_dir"]))
    records = {}
    todo = []
    for job in jobs:
        run_dir = os.path.join(sweep_dir, job["run_dir"])
        if is_complete(run_dir):
            with open(os.path.join(run_dir, "results.json")) as f:
                metrics = json.load(f).get("metrics", {})
            records[job["id"]] = {**{k: job[k] for k in ("id", "label", "overrides", "seed", "run_dir")},
                                  "status": "skipped", "metrics": metrics}
        else:
            records[job["id"]] = {**{k: job[k] for k in ("id", "label", "overrides", "seed", "run_dir")},
                                  "status": "pending"}
            todo.append(job)
    summary = {"name": (meta or {}).get("name"), "engine": engine, **(meta or {}),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "finished": None, "counts": {}, "runs": []}
    n_skip = len(jobs) - len(todo)
    echo(f"Sweep '{summary['name']}': {len(jobs)} runs ({n_skip} already complete, {len(todo)} to run) "
         f"in {sweep_dir}")

    def write():
        summary["runs"] = [records[j["id"]] for j in jobs]
        statuses = [r["status"] for r in summary["runs"]]
        summary["counts"] = {s: statuses.count(s) for s in ("complete", "skipped", "failed", "pending")}
        summary["counts"]["total"] = len(statuses)
        io.write_json(os.path.join(sweep_dir, SUMMARY), summary)

    finished = [0]

    def on_done(rec):
        records[rec["id"]] = rec
        finished[0] += 1
        write()
        main = next(iter(rec.get("metrics") or {}), None)
        info = (f"{main} {100 * rec['metrics'][main]:.2f}%" if main and isinstance(rec["metrics"][main], float)
                else rec.get("error", ""))
        dur = f"{rec['duration_s']:.1f} s" if rec.get("duration_s") is not None else ""
        echo(f"[{finished[0]}/{len(todo)}] {rec['status']:<8s} {rec['id']}  {info}  {dur}")

    write()
    if engine == "local":
        run_local(todo, sweep_dir, workers, on_done)
    elif engine == "ray":
        run_ray(todo, sweep_dir, address, cpus_per_run, gpus_per_run, on_done)
    elif engine == "slurm":                 # submitit, imported only here (the slurm extra)
        from cl.sweep.slurm import run_slurm
        run_slurm(todo, sweep_dir, on_done, cpus_per_job=cpus_per_run, **(slurm or {}))
    else:
        raise ConfigError(f"Unknown engine '{engine}'{did_you_mean(engine, ENGINES)}; use {', '.join(ENGINES)}.")
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write()
    return summary


def check_resources(engine, workers, cpus_per_run, gpus_per_run):
    """ConfigError for an unknown engine or a worker count / per-run resource out of range."""
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'{did_you_mean(engine, ENGINES)}; use {', '.join(ENGINES)}.")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers}.")
    if cpus_per_run is not None and not cpus_per_run > 0:
        raise ConfigError(f"--cpus-per-run must be > 0, got {cpus_per_run}.")
    if gpus_per_run is not None and not gpus_per_run >= 0:
        raise ConfigError(f"--gpus-per-run must be >= 0, got {gpus_per_run}.")


def default_dir(spec, smoke):
    return os.path.join("runs", "smoke" if smoke else "sweeps", sanitize_name(spec["name"]))


def cmd_sweep(args):
    check_resources(args.engine, args.workers, args.cpus_per_run, args.gpus_per_run)
    spec = load_spec(args.sweep)
    jobs = plan(spec, args.overrides, smoke=args.smoke)
    sweep_dir = os.path.abspath(args.out or default_dir(spec, args.smoke))
    if args.dry_run:
        for job in jobs:
            print(f"{job['id']:<60s} {os.path.join(sweep_dir, job['run_dir'])}")
        return 0
    os.makedirs(sweep_dir, exist_ok=True)
    io.write_text(os.path.join(sweep_dir, "sweep.yaml"),
                  yaml.safe_dump({**copy.deepcopy(spec), "cli_overrides": list(args.overrides),
                                  "smoke_mode": bool(args.smoke)}, sort_keys=False))
    summary = run_sweep(jobs, sweep_dir, engine=args.engine, workers=args.workers, address=args.address,
                        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                        meta={"name": spec["name"], "sweep_file": os.path.abspath(args.sweep)},
                        slurm={"partition": args.partition, "time_min": args.time, "gpus_per_job": args.gpus_per_job,
                               "cluster": args.cluster, "array_parallelism": args.array_parallelism}
                        if args.engine == "slurm" else None)
    return report_exit(summary, sweep_dir)


def report_exit(summary, sweep_dir):
    """Print the outcome; the exit status is the number of failed runs (0: all complete)."""
    c = summary["counts"]
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    print(f"{c['complete']} complete, {c['skipped']} skipped (complete before), {c['failed']} failed. "
          f"Summary: {os.path.join(sweep_dir, SUMMARY)}. Table and plots: cl report {sweep_dir}")
    for r in failed:
        print(f"  FAILED {r['id']}: {r['error']}  (traceback: {os.path.join(sweep_dir, r['run_dir'], 'error.log')})")
    return min(len(failed), 125)


def add_parser(subparsers):
    p = subparsers.add_parser("sweep", help="run a sweep: base experiment x overrides/grid x seeds",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="sweep YAML (experiments/sweeps/NAME.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run, e.g. device=cpu")
    p.add_argument("--out", help="sweep folder (default runs/sweeps/NAME, or runs/smoke/NAME with --smoke)")
    p.add_argument("--engine", default="local", choices=ENGINES)
    p.add_argument("--workers", type=int, default=1, help="local engine: parallel worker processes")
    p.add_argument("--address", default=None,
                   help="ray engine: HOST:PORT of the cluster or 'auto' (default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="ray engine: CPUs reserved per run")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="ray engine: GPUs per run (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--partition", default=None, help="slurm engine: the SLURM partition of the jobs")
    p.add_argument("--time", type=int, default=60, help="slurm engine: time limit of each job in minutes "
                   "(a job stopped at its limit is requeued and resumes its run's checkpoint)")
    p.add_argument("--gpus-per-job", type=int, default=0, help="slurm engine: GPUs per job; N > 1 makes each run "
                   "data-parallel over N ranks (docs/distributed.md)")
    p.add_argument("--array-parallelism", type=int, default=64, help="slurm engine: jobs of the array running at once")
    p.add_argument("--cluster", default="slurm", choices=["slurm", "local", "debug"],
                   help="slurm engine: 'local' runs the jobs as local processes through submitit (a check without a cluster)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check: first seed, smoke overrides")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their folders, run nothing")
    p.set_defaults(func=cmd_sweep)
    return p
