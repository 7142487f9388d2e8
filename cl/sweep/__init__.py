"""Sweeps: ``cl sweep SWEEP.yaml`` runs a base experiment x override sets / grid x seeds.

    spec.py     load and validate the sweep file
    plan.py     variants, labels, digests -> jobs with resolved configs
    engines.py  run jobs: local worker pool or Ray
    driver.py   what is left to run, sweep_summary.json, the command line
"""
from cl.sweep.driver import SUMMARY, add_parser, check_same_config, cmd_sweep, is_complete, report_exit, run_sweep
from cl.sweep.engines import (crash_record, execute_job, pack_dir, ray_task, run_local, run_ray, unpack_dir,
                              visible_gpus)
from cl.sweep.plan import flatten, label_of, plan, variants
from cl.sweep.spec import load_spec, resolve_relative

__all__ = ["SUMMARY", "add_parser", "check_same_config", "cmd_sweep", "is_complete", "report_exit", "run_sweep",
           "crash_record", "execute_job", "pack_dir", "ray_task", "run_local", "run_ray", "unpack_dir",
           "visible_gpus", "flatten", "label_of", "plan", "variants", "load_spec", "resolve_relative"]
