"""The ``slurm`` sweep engine: one SLURM job per run, submitted through submitit.

``cl sweep SWEEP.yaml --engine slurm --partition gpu --time 120 --gpus-per-job 1`` submits every
run that is not complete as one job of a job array (``--array-parallelism`` at once) and waits for
them, writing ``sweep_summary.json`` as they finish. Each job is ``execute_job``: a ``cl run`` of
its config into its deterministic folder with ``resume=True``. A job SLURM preempts or that reaches
its time limit is requeued by submitit (``checkpoint`` below) and resumes from the run's last
checkpoint (after its last finished experience), as does a sweep started again after the driver
died. With ``--gpus-per-job N`` (N > 1) a job has N tasks, one per GPU, that form one data-parallel
run (cl/distributed.py): submitit exports the torch.distributed environment of each task.

The submitit logs of each job are under ``SWEEP_DIR/.submitit``. ``--cluster local`` runs the same
jobs as local processes through submitit (a check of a sweep file without a cluster; it is what
tests/test_sweep_slurm.py runs). Requires the ``slurm`` extra: ``pip install 'cl-platform[slurm]'``.
"""
import os

from cl.errors import ClError
from cl.sweep.engines import crash_record, execute_job


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ClError("The slurm engine needs submitit: pip install 'cl-platform[slurm]' (or pip install submitit).") \
            from None
    return submitit


class SlurmRun:
    """The callable each SLURM job runs (picklable; submitit's Checkpointable: requeued on preemption
    or timeout, and the run resumes from its checkpoint)."""

    def __init__(self, ranks=1):
        self.ranks = ranks

    def __call__(self, job, sweep_dir):
        if self.ranks > 1:              # one task per GPU: a torchrun-like environment for cl.distributed
            from cl import distributed
            _submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            distributed.init(str((job.get("config") or {}).get("device", "auto")))
        return execute_job(job, sweep_dir)

    def checkpoint(self, job, sweep_dir):
        """Called by submitit before a requeue: the same call again (it resumes the run's checkpoint)."""
        return _submitit().helpers.DelayedSubmission(self, job, sweep_dir)


def run_slurm(jobs, sweep_dir, on_done, partition=None, time_min=60, gpus_per_job=0, cpus_per_job=1,
              mem_gb=None, array_parallelism=64, cluster="slurm", extra=None):
    """Submit one job per run (a job array) and call ``on_done(record)`` as each finishes."""
    if not jobs:
        return
    submitit = _submitit()
    if cluster not in ("slurm", "local", "debug"):
        raise ClError(f"--cluster must be slurm, local or debug, got '{cluster}'.")
    if not isinstance(time_min, int) or time_min < 1:
        raise ClError(f"--time must be a whole number of minutes >= 1, got {time_min}.")
    if not isinstance(gpus_per_job, int) or gpus_per_job < 0:
        raise ClError(f"--gpus-per-job must be a whole number >= 0, got {gpus_per_job}.")
    executor = submitit.AutoExecutor(folder=os.path.join(sweep_dir, ".submitit", "%j"), cluster=cluster)
    ranks = max(gpus_per_job, 1)
    params = {"timeout_min": time_min, "cpus_per_task": max(int(cpus_per_job), 1), "tasks_per_node": ranks,
              "name": "cl-sweep"}
    if gpus_per_job:
        params["gpus_per_node"] = gpus_per_job
    if mem_gb:
        params["mem_gb"] = mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = array_parallelism
        if partition:
            params["slurm_partition"] = partition
        params.update({f"slurm_{k}": v for k, v in (extra or {}).items()})
    executor.update_parameters(**params)
    fn = SlurmRun(ranks)
    sweep_dir = os.path.abspath(sweep_dir)
    with executor.batch():
        submitted = [(executor.submit(fn, job, sweep_dir), job) for job in jobs]
    by_id = {id(s): job for s, job in submitted}
    poll = 30 if cluster == "slurm" else 0.5          # seconds between status checks (sacct on a cluster)
    for sub in submitit.helpers.as_completed([s for s, _ in submitted], poll_frequency=poll):
        job = by_id[id(sub)]
        try:
            rec = sub.result()
            if isinstance(rec, list):       # one result per task: rank 0's record
                rec = rec[0]
        except Exception as e:  # noqa: BLE001 - the job died (node lost, out of memory, cancelled)
            on_done(crash_record(job, f"SLURM job {sub.job_id} failed: {type(e).__name__}: {e}"))
            continue
        on_done(rec)
