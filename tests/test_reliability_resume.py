"""--resume checks before it touches anything; a run folder is ours, locked while written; a
checkpoint carries the fingerprint of its config and stream; overrides on resume are refused
(keys that decide the results) or applied and recorded (device, threads, logging); SIGTERM /
SIGINT leave status "interrupted" and say how to resume; files are group-readable."""
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from cl import rundir
from cl.cli import main
from conftest import QUICKSTART, REPO
from test_reliability_battery import assert_refused, snapshot

QUIET = ["logging.progress=false", "logging.console=false", "logging.tensorboard=false", "logging.plots=false"]
TINY = ["strategy.epochs=1", "scenario.train_fraction=0.3", "eval_initial=false"] + QUIET


def only_run(out):
    (name,) = os.listdir(out)
    (stamp,) = os.listdir(os.path.join(out, name))
    return os.path.join(out, name, stamp)


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finetune run of 5 experiences, an ER run of 5, and a finetune run of 10 (all complete)."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for key, extra in (("finetune", []), ("er", ["strategy.name=er", "strategy.buffer_size=20"]),
                       ("ten", ["scenario.n_experiences=10"])):
        assert main(["run", QUICKSTART, f"output_dir={root / key}", *extra, *TINY]) == 0
        made[key] = only_run(root / key)
    return made


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def resume_refused(capsys, run_dir, words, extra=()):
    before = snapshot(run_dir)
    capsys.readouterr()
    code = main(["run", "--resume", run_dir, *extra])
    assert_refused(code, capsys.readouterr().err, words, before, snapshot(run_dir))


# ---------------------------------------------------------------------------- fingerprint
def test_checkpoint_of_another_strategy_is_refused(tmp_path, capsys, runs):
    """The finetune run resumed with ER's checkpoint used to exit 0 and write ER's matrix."""
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    shutil.copy(os.path.join(runs["er"], rundir.CHECKPOINT), os.path.join(run_dir, rundir.CHECKPOINT))
    resume_refused(capsys, run_dir, ["strategy.name: \"er\" -> \"finetune\""])


def test_checkpoint_of_a_longer_stream_is_refused(tmp_path, capsys, runs):
    """A 10-experience checkpoint in a 5-experience run used to report completed_experiences 10 of 5."""
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    shutil.copy(os.path.join(runs["ten"], rundir.CHECKPOINT), os.path.join(run_dir, rundir.CHECKPOINT))
    resume_refused(capsys, run_dir, ["stream.experiences"])


def test_fingerprint_names_what_decides_the_results(runs):
    ckpt = torch.load(os.path.join(runs["finetune"], rundir.CHECKPOINT), weights_only=True)
    fields = ckpt["fingerprint"]["fields"]
    assert fields["strategy.name"] == "finetune" and fields["seed"] == 0
    assert fields["stream.experiences"] == 5 and fields["model.name"] == "mlp"
    assert not any(k.startswith("logging.") or k in ("device", "threads", "output_dir") for k in fields)
    other = torch.load(os.path.join(runs["er"], rundir.CHECKPOINT), weights_only=True)["fingerprint"]
    assert other["digest"] != ckpt["fingerprint"]["digest"]


# ---------------------------------------------------------------------------- overrides on resume
def test_override_that_decides_results_is_refused_before_anything(tmp_path, capsys, runs):
    """`--resume DIR strategy.lr=0.5`: the first token after the folder used to be swallowed as a
    config path, later ones were written into config.yaml while the optimizer kept the old lr."""
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    resume_refused(capsys, run_dir, ["strategy.lr: 0.05 -> 0.5"], ["strategy.lr=0.5"])
    resume_refused(capsys, run_dir, ["strategy.momentum"], ["logging.console=false", "strategy.momentum=0.9"])


def test_free_override_is_applied_and_recorded(tmp_path, capsys, runs):
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    os.remove(os.path.join(run_dir, rundir.CHECKPOINT))            # resume from scratch: the run really runs
    assert main(["run", "--resume", run_dir, "device=cpu", "threads=1"]) == 0
    res = results(run_dir)
    assert res["status"] == "complete" and res["config"]["device"] == "cpu" and res["threads_used"] == 1
    (resume,) = res["resumes"]
    assert resume["changed"] == {"device": ["auto", "cpu"], "threads": [0, 1]}
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert "device: cpu" in f.read()


def test_resume_takes_no_experiment_file(tmp_path, capsys, runs):
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    resume_refused(capsys, run_dir, ["takes no experiment file"], [QUICKSTART])


# ---------------------------------------------------------------------------- folders that are not ours
def test_folder_holding_only_a_config_is_not_touched(tmp_path, capsys):
    """--resume on a user's folder with a config.yaml used to delete their *.tmp files and overwrite files."""
    folder = tmp_path / "mine"
    (folder / "deep").mkdir(parents=True)
    shutil.copy(QUICKSTART, folder / "config.yaml")
    for name in ("a.tmp", "deep/b.tmp", ".results.json.abcd1234.tmp", "results.csv"):
        (folder / name).write_text("precious")
    resume_refused(capsys, str(folder), ["not a run folder written by cl"])


def test_stale_temp_clean_up_only_removes_our_names(tmp_path, runs):
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    ours = [os.path.join(run_dir, ".results.json.ab12cd34.tmp"), os.path.join(run_dir, "checkpoints", ".last.pt.x_y_z_1_.tmp")]
    theirs = [os.path.join(run_dir, "notes.tmp"), os.path.join(run_dir, ".draft.md.ab12cd34.tmp"),
              os.path.join(run_dir, "checkpoints", ".other.pt.ab12cd34.tmp"), os.path.join(run_dir, "sub", ".results.json.ab12cd34.tmp")]
    os.makedirs(os.path.join(run_dir, "sub"))
    for p in ours + theirs:
        with open(p, "w") as f:
            f.write("x")
    assert main(["run", "--resume", run_dir]) == 0
    assert not any(os.path.exists(p) for p in ours)
    assert all(os.path.exists(p) for p in theirs)


def test_fresh_run_never_writes_into_a_folder_with_files(tmp_path, capsys):
    from cl.config import load_config
    from cl.errors import ConfigError
    from cl.runner import run
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "results.json").write_text("precious")
    with pytest.raises(ConfigError, match="never overwritten"):
        run(load_config(QUICKSTART, TINY), str(folder))
    assert (folder / "results.json").read_text() == "precious" and os.listdir(folder) == ["results.json"]


# ---------------------------------------------------------------------------- lock
def test_a_locked_run_folder_is_refused(tmp_path, capsys, runs):
    run_dir = copy_run(runs["finetune"], tmp_path / "ft")
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)        # another writer holds it
        resume_refused(capsys, run_dir, ["being written by another process"])
    finally:
        os.close(fd)
    assert main(["run", "--resume", run_dir]) == 0          # free again: resumes


def test_the_lock_is_held_while_the_run_writes(tmp_path, monkeypatch):
    from cl.loggers import RunLogger
    seen = []
    original = RunLogger.experience

    def probe(self, *args):
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except OSError:
            seen.append("locked")
        finally:
            os.close(fd)
        original(self, *args)

    monkeypatch.setattr(RunLogger, "experience", probe)
    assert main(["run", QUICKSTART, f"output_dir={tmp_path}", *TINY]) == 0
    assert seen == ["locked"] * 5
    fd = os.open(only_run(tmp_path), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)          # released at the end
    os.close(fd)


# ---------------------------------------------------------------------------- build errors leave nothing
def test_build_error_leaves_no_run_folder(tmp_path, capsys):
    code = main(["run", QUICKSTART, "scenario.dataset=cifar10", f"scenario.root={tmp_path / 'none'}",
                 f"output_dir={tmp_path / 'out'}", *QUIET])
    assert code == 2
    assert not os.path.exists(tmp_path / "out"), list(os.walk(tmp_path / "out"))   # not even an empty folder


# ---------------------------------------------------------------------------- signals and file modes
def _child_setup():
    os.umask(0o022)
    # as in a terminal: a test suite started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python keeps an ignored SIGINT ignored, so Ctrl-C could not be simulated
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "cl", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_child_setup)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_leaves_interrupted_status_and_says_how_to_resume(tmp_path, sig, code):
    out = tmp_path / "out"
    p = start(["run", QUICKSTART, f"output_dir={out}", "strategy.epochs=40", *QUIET], tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        found = [os.path.join(r, "results.json") for r, _, fs in os.walk(out) if "results.json" in fs]
        if found:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-2000:]
    run_dir = only_run(out)
    assert f"cl run --resume {run_dir}" in err and "Traceback" not in err
    res = results(run_dir)
    assert res["status"] == "interrupted" and 1 <= res["completed_experiences"] < 5
    for name in ("results.json", "metrics.csv", "config.yaml", rundir.CHECKPOINT):
        mode = stat.S_IMODE(os.stat(os.path.join(run_dir, name)).st_mode)
        assert mode == 0o644, (name, oct(mode))                 # as any file written under umask 022
