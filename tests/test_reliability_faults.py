"""Fault injection: SIGKILL a run at several points, check every file, resume, compare.

Each kill happens in a real subprocess (``CL_FAILPOINT``, see cl/faults.py). After each kill,
every file in the run folder must parse (no truncated or half-written file besides the
temporary files that resume removes); after resuming, the accuracy matrix must equal the one of
an uninterrupted run.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import QUICKSTART, REPO

ARGS = ["strategy.epochs=2", "strategy.momentum=0.9", "logging.tensorboard=false", "logging.progress=false",
        "logging.console=false"]


def cl(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "cl", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def check_files(run_dir):
    """Every file parses; returns the names of leftover temporary files."""
    temps = []
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".tmp"):
                temps.append(name)
            elif name.endswith(".json"):
                json.load(open(path))
            elif name.endswith(".yaml"):
                assert yaml.safe_load(open(path))
            elif name.endswith(".csv"):
                rows = list(csv.reader(open(path)))
                assert rows[0] == ["metric", "after_experience", "experience", "value"]
                assert all(len(r) == 4 for r in rows)
            elif name.endswith(".pt"):
                torch.load(path, weights_only=True)
            elif name.endswith(".png"):
                assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    return temps


def only_run_dir(out):
    (name,) = os.listdir(out)
    (stamp,) = os.listdir(os.path.join(out, name))
    return os.path.join(out, name, stamp)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = cl(["run", QUICKSTART, f"output_dir={out}", *ARGS])
    assert r.returncode == 0, r.stderr
    return json.load(open(os.path.join(only_run_dir(out), "results.json")))["accuracy_matrix"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["step@30", "write:last.pt@2", "write:results.json@3", "experience@2"])
def test_kill_then_resume_gives_same_matrix(tmp_path, point, reference):
    r = cl(["run", QUICKSTART, f"output_dir={tmp_path}", *ARGS], {"CL_FAILPOINT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    run_dir = only_run_dir(tmp_path)
    temps = check_files(run_dir)
    if point.startswith("write"):
        assert temps, "the kill should have happened mid-write"
    r = cl(["run", "--resume", run_dir])
    assert r.returncode == 0, r.stderr[-2000:]
    assert check_files(run_dir) == []
    res = json.load(open(os.path.join(run_dir, "results.json")))
    assert res["status"] == "complete"
    assert res["accuracy_matrix"] == reference


@pytest.mark.slow
def test_sweep_killed_mid_run_resumes_to_the_same_results(tmp_path):
    """SIGKILL the whole sweep process (workers=1) between two experiences of its second run;
    every file still parses, and re-running the sweep completes it with the same matrices as an
    uninterrupted sweep (the first run is skipped, the second resumes from its checkpoint)."""
    spec = {"base": QUICKSTART, "seeds": [0, 1],
            "experiment": {"strategy.epochs": 1, "scenario.train_fraction": 0.4, "threads": 1, "eval_initial": False,
                           "logging.tensorboard": False, "logging.plots": False, "logging.progress": False}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))

    def matrices(out):
        found = {}
        for root, _, files in os.walk(out):
            if "results.json" in files:
                res = json.load(open(os.path.join(root, "results.json")))
                found[res["seed"]] = (res["status"], res["accuracy_matrix"])
        return found

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert cl(["sweep", str(sweep), "--out", str(clean)]).returncode == 0
    r = cl(["sweep", str(sweep), "--out", str(killed)], {"CL_FAILPOINT": "experience@7"})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert check_files(killed) == []
    partial = matrices(killed)
    assert partial[0][0] == "complete" and partial[1][0] == "running" and len(partial[1][1]) == 2
    r = cl(["sweep", str(sweep), "--out", str(killed)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert check_files(killed) == []
    assert matrices(killed) == matrices(clean)
    assert all(status == "complete" for status, _ in matrices(clean).values())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["write:.cl-run", "folder:staged", "write:config.yaml", "folder:created"])
def test_kill_while_creating_the_run_folder_leaves_a_resumable_run_or_nothing(tmp_path, point, reference):
    """A kill between creating the run folder and writing config.yaml used to leave a folder that
    could not be resumed. The folder is now staged hidden and renamed into place complete."""
    r = cl(["run", QUICKSTART, f"output_dir={tmp_path}", *ARGS], {"CL_FAILPOINT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    parent = tmp_path / "quickstart"
    visible = [d for d in os.listdir(parent) if not d.startswith(".")]
    if point == "folder:created":                       # renamed into place: resumable
        (name,) = visible
        r = cl(["run", "--resume", str(parent / name)])
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.load(open(parent / name / "results.json"))
        assert res["status"] == "complete" and res["accuracy_matrix"] == reference
    else:                                               # still staged: nothing visible
        assert visible == [] and len(os.listdir(parent)) == 1
        r = cl(["run", QUICKSTART, f"output_dir={tmp_path}", *ARGS])   # the next run clears the dead staging
        assert r.returncode == 0, r.stderr[-2000:]
        (name,) = os.listdir(parent)
        assert json.load(open(parent / name / "results.json"))["accuracy_matrix"] == reference


def children(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process parents from /proc (Linux)")
def test_killing_the_sweep_parent_stops_its_workers(tmp_path):
    """SIGKILL of `cl sweep --workers 2` used to leave both workers running forever. They now get
    SIGTERM when the parent dies, and their runs save status "interrupted"."""
    spec = {"base": QUICKSTART, "seeds": [0, 1],
            "experiment": {"strategy.epochs": 2000, "eval_initial": False, "logging.tensorboard": False,
                           "logging.plots": False}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-m", "cl", "sweep", str(sweep), "--out", str(tmp_path / "out"),
                          "--workers", "2"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    configs = [tmp_path / "out" / "base" / f"seed{s}" / "config.yaml" for s in (0, 1)]
    deadline = time.time() + 240
    while time.time() < deadline and not all(c.exists() for c in configs):
        time.sleep(0.2)
    assert all(c.exists() for c in configs), "the two runs did not start"
    time.sleep(3)                               # let both runs enter their loops
    workers = children(p.pid)
    assert len(workers) >= 2
    p.kill()
    p.wait()
    deadline = time.time() + 150                # they save "interrupted" first (slow on a loaded machine)
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "workers outlived the sweep"
    for s in (0, 1):
        res = json.load(open(tmp_path / "out" / "base" / f"seed{s}" / "results.json"))
        assert res["status"] == "interrupted"
