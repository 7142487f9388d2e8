"""Run by tests/test_distributed.py and benchmarks/distributed_scale.py under torchrun (gloo ranks).

    torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py JOBS.json OUT_DIR

JOBS.json: a list of {"key", "overrides" (cl run key=value list), "crash" (optional: stop after
experience 1, then --resume)}. Each job runs through ``cl.runner.run`` on every rank into
OUT_DIR/<key>; rank 0 writes OUT_DIR/<key>.json with the accuracy matrices (or the ConfigError
that refused the run) and the wall time. Rank 1 records every file write it attempts (there must
be none) in OUT_DIR/rank1_writes.json.
"""
import json
import os
import sys
import time

from cl import distributed as ddp
from cl import faults, io, loggers
from cl.config import load_config
from cl.errors import ConfigError
from cl.registry import load_builtins


class Crash(Exception):
    pass


def record_writes(writes):
    """On ranks other than 0: every write through cl.io or a RunLogger is recorded (and not done)."""
    for name in ("torch_save", "write_json", "write_text"):
        setattr(io, name, lambda path, *a, _n=name, **k: writes.append(f"{_n} {path}"))
    real_init = loggers.RunLogger.__init__

    def init(self, run_dir, *a, **k):
        writes.append(f"RunLogger {run_dir}")
        real_init(self, run_dir, *a, **k)
    loggers.RunLogger.__init__ = init


def run_kept(cfg, run_dir, resume=False):
    """``cl.runner.run`` that also returns a checksum of the final strategy state (cl.distributed.checksum)."""
    import cl.runner as runner
    kept, real_build = {}, runner.build

    def spy(c):
        kept["run"] = real_build(c)
        return kept["run"]
    runner.build = spy
    try:
        res = runner.run(cfg, run_dir, resume=resume)
    finally:
        runner.build = real_build
    return res, float(ddp.checksum(kept["run"].strategy))


def run_job(job, out):
    import cl.runner as runner
    run_dir = os.path.join(out, job["key"])
    cfg = load_config(None, job["overrides"])
    t0, gathers = time.perf_counter(), ddp.STATS["gathers"]
    if job.get("crash"):
        real_hit = faults.hit

        def crash_once(point):
            if point == "experience":
                raise Crash()
            real_hit(point)
        faults.hit = crash_once
        try:
            runner.run(cfg, run_dir)
        except Crash:
            pass
        finally:
            faults.hit = real_hit
        res, check = run_kept(load_config(None, job["overrides"]), run_dir, resume=True)
    else:
        res, check = run_kept(cfg, run_dir)
    return {"checksum": check, "status": res["status"], "R": res.get("accuracy_matrix"), "R_task": res.get("task_il_accuracy_matrix"),
            "wall_s": time.perf_counter() - t0, "world": ddp.world(), "gathers": ddp.STATS["gathers"] - gathers}


def main(jobs_path, out):
    ddp.init("cpu")
    load_builtins()
    with open(jobs_path) as f:
        jobs = json.load(f)
    writes = []
    if not ddp.is_main():
        record_writes(writes)
    for job in jobs:
        try:
            rec = run_job(job, out)
        except ConfigError as e:
            rec = {"refused": str(e)}
        if ddp.is_main():
            with open(os.path.join(out, job["key"] + ".json"), "w") as f:
                json.dump(rec, f)
    if not ddp.is_main():
        with open(os.path.join(out, f"rank{ddp.rank()}_writes.json"), "w") as f:
            json.dump(writes, f)
    ddp.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
