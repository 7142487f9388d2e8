"""The slurm sweep engine (cl/sweep/slurm.py) through submitit's local executor (no cluster here).

A job killed after its second experience (SIGKILL through the CL_FAILPOINT fail point, as a node
lost or a time limit would) is recorded as failed; the sweep run again resumes it from its
checkpoint, and the finished run equals the local engine's run of the same sweep.
"""
import json
import os

import pytest
import yaml

import cl.faults  # noqa: F401  (imported before CL_FAILPOINT is set: only the jobs' own processes are armed)
import cl.runner  # noqa: F401
from cl.cli import main
from conftest import QUICKSTART

pytest.importorskip("submitit", reason="the slurm engine needs submitit (pip install 'cl-platform[slurm]')")

TINY = {"strategy.epochs": 1, "scenario.train_fraction": 0.4, "test_subsample": 0.5, "threads": 1,
        "logging.tensorboard": False, "logging.plots": False, "eval_initial": False}


def load(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow      # each job is a fresh Python process (about 30 s on the loaded CI machine)
def test_slurm_engine_runs_resumable_jobs_through_submitit(tmp_path, monkeypatch):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": QUICKSTART, "experiment": TINY, "seeds": [0]}, sort_keys=False))
    out = tmp_path / "slurm"
    args = ["sweep", str(sweep), "--out", str(out), "--engine", "slurm", "--cluster", "local",
            "--partition", "gpu", "--time", "5"]
    monkeypatch.setenv("CL_FAILPOINT", "experience@2")          # the job's process is killed after experience 2
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      os.environ.get("PYTHONPATH", "")]))
    assert main(args) == 1
    summary = load(out / "sweep_summary.json")
    assert summary["engine"] == "slurm" and summary["counts"]["failed"] == 1
    run_dir = out / summary["runs"][0]["run_dir"]
    assert "SLURM job" in summary["runs"][0]["error"]
    first = load(run_dir / "results.json")
    assert first["completed_experiences"] == 2 and first["status"] == "running"
    assert list((out / ".submitit").iterdir())                   # submitit's job folders and logs
    monkeypatch.delenv("CL_FAILPOINT")
    assert main(args) == 0                                       # resubmitted: resumes its checkpoint
    res = load(run_dir / "results.json")
    assert res["status"] == "complete" and res["accuracy_matrix"][:2] == first["accuracy_matrix"]
    assert len(res["resumes"]) == 1                              # one --resume recorded in results.json
    assert main(args) == 0 and load(out / "sweep_summary.json")["counts"]["skipped"] == 1
    local = tmp_path / "local"
    assert main(["sweep", str(sweep), "--out", str(local)]) == 0
    assert load(local / summary["runs"][0]["run_dir"] / "results.json")["accuracy_matrix"] == res["accuracy_matrix"]


def test_slurm_engine_in_process_debug_cluster(tmp_path):
    """submitit's debug executor runs the job in this process: the plumbing (submission, records,
    summary) without a process start."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": QUICKSTART, "experiment": TINY, "seeds": [0],
                                     "grid": {"strategy.lr": [0.01]}}, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--engine", "slurm", "--cluster", "debug"]) == 0
    summary = load(out / "sweep_summary.json")
    assert summary["engine"] == "slurm" and summary["counts"]["complete"] == 1
    res = load(out / summary["runs"][0]["run_dir"] / "results.json")
    assert res["status"] == "complete" and res["config"]["strategy"]["lr"] == 0.01


def test_slurm_engine_options_are_checked(tmp_path):
    from cl.errors import ClError
    from cl.sweep.slurm import run_slurm
    with pytest.raises(ClError, match="--time"):
        run_slurm([{"id": "x"}], str(tmp_path), print, time_min=0, cluster="local")
    with pytest.raises(ClError, match="--cluster"):
        run_slurm([{"id": "x"}], str(tmp_path), print, cluster="pbs")
