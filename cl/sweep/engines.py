"""Engines that run a sweep's jobs: ``run_local`` (this process or a pool of spawned workers) and
``run_ray`` (one Ray task per job). Each calls ``on_done(record)`` once per job; a failing run
becomes a record with its error, never an exception.
"""
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from cl import io
from cl.errors import ClError

__all__ = ["execute_job", "crash_record", "run_local", "run_ray", "ray_task", "pack_dir", "unpack_dir",
           "visible_gpus"]


# ---------------------------------------------------------------------------- one run
def execute_job(job, sweep_dir):
    """Run one job into ``sweep_dir/job.run_dir`` (resuming its checkpoint); returns its record.

    Never raises for a failing run: the error and traceback go into the record and error.log.
    """
    from cl.config import build_config
    from cl.errors import ClError as _ClError
    from cl.runner import run
    t0 = time.time()
    run_dir = os.path.join(sweep_dir, job["run_dir"])
    rec = {k: job[k] for k in ("id", "label", "overrides", "seed", "run_dir")}
    try:
        results = run(build_config(job["config"]), run_dir, resume=True)
        rec.update(status="complete", metrics=finite(results.get("metrics", {})))
    except Exception as e:  # noqa: BLE001 - a crashing run must not stop the sweep
        tb = traceback.format_exc()
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", user_error=isinstance(e, _ClError),
                   traceback=tb)
        io.write_text(os.path.join(run_dir, "error.log"), tb)
    rec["duration_s"] = round(time.time() - t0, 3)
    return rec


def finite(metrics):
    """Metrics as results.json stores them: NaN/inf -> None (valid JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def crash_record(job, why):
    return {**{k: job[k] for k in ("id", "label", "overrides", "seed", "run_dir")}, "status": "failed",
            "error": why, "user_error": False, "traceback": why, "duration_s": None}


# ---------------------------------------------------------------------------- local engine
def visible_gpus():
    """GPU ids a worker may be given (honours an existing CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


_WORKER = {"in_job": False, "stopping": False}   # this worker process's state (see _on_stop)


def _init_worker(slots, gpus, parent):
    """Pool initializer: take a worker slot, pin one GPU (round-robin), and make sure the worker
    does not outlive the sweep: SIGTERM / SIGINT stop its run as Ctrl-C does (results.json says
    "interrupted") and the worker exits; it gets SIGTERM when the parent process dies, however it dies.

    The number of torch threads comes from each run's config (``threads``, resolved by the plan),
    never from the number of workers, so results do not depend on ``--workers``."""
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    _die_with_parent(parent)


def _on_stop(signum, frame):
    """First signal: an idle worker exits at once; a busy one interrupts its run (which saves its
    results as "interrupted") and exits in worker_job. Later signals are ignored while it saves."""
    if _WORKER["stopping"]:
        return
    _WORKER["stopping"] = True
    if not _WORKER["in_job"]:
        os._exit(1)
    raise KeyboardInterrupt("SIGTERM" if signum == signal.SIGTERM else "SIGINT")


def worker_job(job, sweep_dir):
    """execute_job in a pool worker; an interrupted run ends the worker process (the sweep is stopping)."""
    _WORKER["in_job"] = True
    try:
        return execute_job(job, sweep_dir)
    except KeyboardInterrupt:
        os._exit(1)
    finally:
        _WORKER["in_job"] = False


def _die_with_parent(parent, poll_s=0.5, grace_s=60.0):
    """SIGTERM to this process when ``parent`` is gone (Linux: at once, through PR_SET_PDEATHSIG;
    elsewhere, and as a fallback: a watchdog thread that polls the parent id), then exit after
    ``grace_s`` seconds if the run has not stopped by itself."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)            # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 - not Linux / no libc: the watchdog below still works
        pass
    if os.getppid() != parent:                            # died before prctl took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        if not _WORKER["stopping"]:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="cl-sweep-parent-watch", daemon=True).start()


def run_local(jobs, sweep_dir, workers, on_done):
    """Run jobs in ``workers`` spawned processes (in this process when workers == 1).

    If this process is interrupted (Ctrl-C, SIGTERM), the workers get SIGTERM (their runs save
    status "interrupted"), are killed if still alive after a grace period, and the interrupt
    propagates; if it is killed outright, the workers stop themselves (see _die_with_parent)."""
    if workers <= 1:
        for job in jobs:
            on_done(execute_job(job, sweep_dir))
        return
    ctx = mp.get_context("spawn")
    gpus = visible_gpus()
    pending = list(jobs)
    while pending:
        slots = ctx.SimpleQueue()
        for i in range(workers):
            slots.put(i)
        broken = False
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(slots, gpus, os.getpid())) as pool:
            try:
                inflight = {}
                while (pending and not broken) or inflight:
                    while pending and not broken and len(inflight) < workers:
                        job = pending.pop(0)
                        inflight[pool.submit(worker_job, job, sweep_dir)] = job
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        job = inflight.pop(fut)
                        try:
                            on_done(fut.result())
                        except BrokenProcessPool:
                            broken = True
                            on_done(crash_record(job, "The worker process died while this run was in flight (this "
                                                      "run or one beside it was killed: out of memory or a crash in "
                                                      "native code). Re-run the sweep to retry it."))
                        except Exception as e:  # noqa: BLE001 - e.g. a job that cannot be pickled
                            on_done(crash_record(job, f"{type(e).__name__}: {e}"))
            except BaseException:
                stop_workers(pool)
                raise


def stop_workers(pool, grace_s=60.0):
    """SIGTERM every worker of ``pool``, wait up to ``grace_s`` seconds, SIGKILL the rest."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
    pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------- ray engine
def pack_dir(folder):
    """{relative path: bytes} of every file under folder ({} when it does not exist)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def unpack_dir(files, folder):
    """Write {relative path: bytes} under folder (atomically per file; paths cannot escape folder)."""
    base = os.path.abspath(folder)
    for rel, data in files.items():
        path = os.path.abspath(os.path.join(base, rel))
        if os.path.commonpath([base, path]) != base:
            raise ValueError(f"refusing to write {rel!r} outside {base}")
        io._atomic(path, lambda f, data=data: f.write(data))


def ray_task(job, sweep_dir, token, cwd, files):
    """Body of one Ray task. Writes straight into the sweep folder when this node sees it (shared
    filesystem, recognised by its token); otherwise runs in a temporary folder and returns the
    run folder's files so that the driver writes them into the sweep folder."""
    import tempfile
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        with open(os.path.join(sweep_dir, ".sweep_token")) as f:
            shared = f.read().strip() == token
    except OSError:
        shared = False
    if shared:
        return execute_job(job, sweep_dir), None
    with tempfile.TemporaryDirectory(prefix="cl-sweep-") as tmp:
        unpack_dir(files, os.path.join(tmp, job["run_dir"]))
        rec = execute_job(job, tmp)
        return rec, pack_dir(os.path.join(tmp, job["run_dir"]))


def run_ray(jobs, sweep_dir, address, cpus_per_run, gpus_per_run, on_done):
    """Submit each job as a Ray task (resources per run) and collect the records as they finish."""
    try:
        import ray
    except ImportError:
        raise ClError("The ray engine needs Ray: pip install 'cl-platform[ray]' (or pip install 'ray[default]').") \
            from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     configure_logging=False)
        except Exception as e:  # noqa: BLE001 - connection errors come in several types
            raise ClError(f"Cannot connect to the Ray cluster at '{address}': {e}. Start one with "
                          "`ray start --head --port=6379` and pass --address HOST:PORT (or --address auto "
                          "on a cluster node), or leave --address out to start a local Ray.") from None
    try:
        if gpus_per_run is None:
            gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        token = uuid.uuid4().hex
        io.write_text(os.path.join(sweep_dir, ".sweep_token"), token)
        remote = ray.remote(ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        cwd = os.getcwd()
        refs = {}
        for job in jobs:
            files = pack_dir(os.path.join(sweep_dir, job["run_dir"]))  # checkpoint to resume from, if any
            refs[remote.remote(job, os.path.abspath(sweep_dir), token, cwd, files)] = job
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                job = refs.pop(ref)
                try:
                    rec, files = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - worker died, node lost, ...
                    on_done(crash_record(job, f"Ray task failed: {type(e).__name__}: {e}"))
                    continue
                if files:
                    unpack_dir(files, os.path.join(sweep_dir, job["run_dir"]))
                on_done(rec)
    finally:
        if started_here:
            ray.shutdown()


