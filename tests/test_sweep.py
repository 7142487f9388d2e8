"""Sweeps (local and Ray engines), the sweep report, and cl reproduce."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import yaml

import cl.runner
from cl.cli import main
from cl.errors import ConfigError
from cl.sweep import label_of, load_spec, pack_dir, plan, ray_task, unpack_dir
from conftest import QUICKSTART
from cl.strategy import Strategy

# A tiny, quiet, single-threaded quickstart (threads=1 makes every engine compute the same numbers).
TINY = {"strategy.epochs": 1, "scenario.train_fraction": 0.4, "test_subsample": 0.5, "threads": 1,
        "logging.tensorboard": False, "logging.plots": False, "eval_initial": False}


def write_sweep(tmp_path, name="s", **spec):
    path = tmp_path / f"{name}.yaml"
    spec = {"base": QUICKSTART, "experiment": dict(TINY), **spec}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def load(path):
    with open(path) as f:
        return json.load(f)


def read_csv(path):
    with open(path) as f:
        return {row["label"]: row for row in csv.DictReader(f)}


class Boom(Strategy):
    """Fine-tuning that raises during the second experience while ``Boom.armed`` is true."""
    armed = True
    trained_on = []                    # experience indexes this class trained on (in this process)

    def before_experience(self, exp):
        self.exp_index = exp.index
        type(self).trained_on.append(exp.index)

    def train_step(self, batch):
        if type(self).armed and self.exp_index >= 1:
            raise RuntimeError("boom in experience 1")
        return super().train_step(batch)


# ---------------------------------------------------------------------------- local engine
def test_grid_sweep_runs_8_folders_aggregates_and_skips_on_rerun(tmp_path, monkeypatch, capsys):
    sweep = write_sweep(tmp_path, grid={"strategy.lr": [0.01, 0.1], "strategy.batch_size": [16, 64]}, seeds=[0, 1])
    out = tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out)]) == 0
    runs = [os.path.join(root) for root, _, files in os.walk(out) if "results.json" in files]
    assert len(runs) == 8
    for d in runs:
        assert load(os.path.join(d, "results.json"))["status"] == "complete"
    assert os.path.isdir(out / "strategy.lr-0.01__strategy.batch_size-16" / "seed1")
    summary = load(out / "sweep_summary.json")
    assert summary["counts"]["complete"] == 8 and summary["counts"]["failed"] == 0

    # the aggregate table holds mean and sample std over the two seeds of each configuration
    assert main(["report", str(out)]) == 0
    table = read_csv(out / "report" / "table.csv")
    md = (out / "report" / "table.md").read_text()
    assert len(table) == 4
    for label, row in table.items():
        res = [load(out / label / f"seed{s}" / "results.json") for s in (0, 1)]
        assert res[0]["config"]["seed"] == 0 and res[1]["config"]["seed"] == 1
        for metric in ("average_accuracy", "forgetting"):
            vals = [r["metrics"][metric] for r in res]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(vals), abs=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
            assert f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}" in md
        assert row["strategy.lr"] == str(res[0]["config"]["strategy"]["lr"])
    lr_row = table["strategy.lr-0.1__strategy.batch_size-16"]
    assert lr_row["seeds"] == "0 1" and lr_row["strategy.batch_size"] == "16"
    assert r"$\pm$" in (out / "report" / "table.tex").read_text()
    for plot in ("average_accuracy.png", "accuracy_matrices.png"):
        assert os.path.getsize(out / "report" / "plots" / plot) > 1000
    hp_runs = [d for d in os.listdir(out / "report" / "hparams") if os.path.isdir(out / "report" / "hparams" / d)]
    assert len(hp_runs) == 8

    # a second invocation finds all 8 complete and runs nothing
    def no_run(*a, **k):
        raise AssertionError("a complete run was run again")
    monkeypatch.setattr(cl.runner, "run", no_run)
    capsys.readouterr()
    assert main(["sweep", sweep, "--out", str(out)]) == 0
    assert "8 already complete, 0 to run" in capsys.readouterr().out
    assert load(out / "sweep_summary.json")["counts"]["skipped"] == 8


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_failing_run_is_recorded_and_the_others_complete(tmp_path, workers):
    """The middle run raises (in this process, or in one of 2 spawned workers); the others complete;
    exit status = number of failed runs."""
    sweep = write_sweep(tmp_path, overrides=[{"strategy.name": "finetune"}, {"strategy.name": "test_sweep:Boom"},
                                             {"strategy.name": "joint"}], seeds=[3])
    out = tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out), "--workers", str(workers)]) == 1
    summary = load(out / "sweep_summary.json")
    status = {r["id"]: r for r in summary["runs"]}
    assert summary["counts"] == {"complete": 2, "skipped": 0, "failed": 1, "pending": 0, "total": 3}
    failed = status["strategy.name-test_sweep_Boom/seed3"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom in experience 1"
    assert "Traceback" in failed["traceback"] and "in train_step" in failed["traceback"]
    assert "boom in experience 1" in (out / failed["run_dir"] / "error.log").read_text()
    for rid in ("strategy.name-finetune/seed3", "strategy.name-joint/seed3"):
        assert status[rid]["status"] == "complete"
        assert load(out / status[rid]["run_dir"] / "results.json")["status"] == "complete"
    # the report aggregates the complete runs and shows the failed one as missing
    assert main(["report", str(out)]) == 0
    table = read_csv(out / "report" / "table.csv")
    assert table["strategy.name-test_sweep_Boom"]["n_seeds"] == "0"
    assert table["strategy.name-test_sweep_Boom"]["average_accuracy_mean"] == ""
    assert float(table["strategy.name-joint"]["average_accuracy_mean"]) == \
        load(out / status["strategy.name-joint/seed3"]["run_dir"] / "results.json")["metrics"]["average_accuracy"]


def test_rerun_resumes_a_crashed_run_from_its_checkpoint(tmp_path, monkeypatch):
    sweep = write_sweep(tmp_path, overrides=[{"strategy.name": "test_sweep:Boom"}], seeds=[0])
    out = tmp_path / "out"
    monkeypatch.setattr(Boom, "armed", True)
    monkeypatch.setattr(Boom, "trained_on", [])
    assert main(["sweep", sweep, "--out", str(out)]) == 1       # workers=1: in this process
    run_dir = out / "strategy.name-test_sweep_Boom" / "seed0"
    assert os.path.isfile(run_dir / "checkpoints" / "last.pt")  # experience 0 finished before the crash
    first = load(run_dir / "results.json")
    assert first["completed_experiences"] == 1
    assert Boom.trained_on == [0, 1]                            # raised in experience 1
    monkeypatch.setattr(Boom, "armed", False)
    monkeypatch.setattr(Boom, "trained_on", [])
    assert main(["sweep", sweep, "--out", str(out)]) == 0
    res = load(run_dir / "results.json")
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == 5
    assert res["accuracy_matrix"][0] == first["accuracy_matrix"][0]
    assert Boom.trained_on == [1, 2, 3, 4]                      # resumed after experience 0


# ---------------------------------------------------------------------------- planning
def test_plan_labels_are_deterministic_and_sanitized(tmp_path):
    spec = load_spec(write_sweep(tmp_path, overrides=[{"strategy.name": "finetune"}, {"strategy": {"name": "joint"}}],
                                 grid={"strategy.lr": [0.01, 0.1]}, seeds=[0, 5]))
    jobs = plan(spec)
    assert [j["id"] for j in jobs][:3] == ["strategy.name-finetune__strategy.lr-0.01/seed0",
                                           "strategy.name-finetune__strategy.lr-0.01/seed5",
                                           "strategy.name-finetune__strategy.lr-0.1/seed0"]
    assert len({j["run_dir"] for j in jobs}) == 8 and plan(spec) == jobs
    assert jobs[-1]["config"]["strategy"]["name"] == "joint" and jobs[-1]["config"]["seed"] == 5
    assert jobs[-1]["config"]["strategy"]["lr"] == 0.1
    escape = label_of({"scenario.root": "../../etc"})
    assert escape.startswith("scenario.root-") and "/" not in escape and ".." not in escape
    assert "/" not in label_of({"a": "x/y"}) and label_of({}) == "base"
    assert len(label_of({"k": "v" * 500})) < 140


def test_bad_sweep_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'grid'"):
        load_spec(write_sweep(tmp_path, grdi={"seed": [1]}))
    with pytest.raises(ConfigError, match="non-empty list"):
        load_spec(write_sweep(tmp_path, grid={"strategy.lr": 0.1}))
    with pytest.raises(ConfigError, match="strategy.lrr"):  # unknown config key, before anything runs
        plan(load_spec(write_sweep(tmp_path, grid={"strategy.lrr": [0.1]})))
    assert main(["sweep", write_sweep(tmp_path, seeds=["a"]), "--out", str(tmp_path / "o")]) == 2


def test_changed_sweep_file_does_not_silently_reuse_old_runs(tmp_path):
    out = tmp_path / "out"
    sweep = write_sweep(tmp_path, grid={"strategy.lr": [0.1]}, seeds=[0])
    assert main(["sweep", sweep, "--out", str(out)]) == 0
    sweep = write_sweep(tmp_path, grid={"strategy.lr": [0.1]}, seeds=[0], experiment={**TINY, "strategy.momentum": 0.5})
    with pytest.raises(ConfigError, match="strategy.momentum: 0.0 -> 0.5"):
        main(["--debug", "sweep", sweep, "--out", str(out)])


def test_ray_task_ships_files_when_the_sweep_folder_is_not_shared(tmp_path):
    """Without a shared filesystem the task runs in a temporary folder and returns the run's files."""
    (job,) = plan(load_spec(write_sweep(tmp_path, grid={"strategy.lr": [0.1]}, seeds=[0])))
    rec, files = ray_task(job, str(tmp_path / "not-on-this-node"), "token", os.getcwd(), {})
    assert rec["status"] == "complete" and "results.json" in files and "checkpoints/last.pt" in files
    unpack_dir(files, tmp_path / "back")
    assert load(tmp_path / "back" / "results.json")["metrics"] == rec["metrics"]
    assert pack_dir(tmp_path / "back").keys() == files.keys()
    with pytest.raises(ValueError, match="outside"):
        unpack_dir({"../evil": b"x"}, tmp_path / "back")


# ---------------------------------------------------------------------------- ray engine
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_engine_matches_local_engine(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'ray[default]')")
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    assert ray_bin, "the ray package is installed but its `ray` command is not on PATH"
    sweep = write_sweep(tmp_path, overrides=[{"strategy.name": "finetune"}, {"strategy.name": "joint"}], seeds=[0, 1])
    assert main(["sweep", sweep, "--out", str(tmp_path / "local")]) == 0
    assert main(["report", str(tmp_path / "local")]) == 0

    port, dash, client = free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")          # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--dashboard-port={dash}", "--include-dashboard=false", f"--ray-client-server-port={client}",
             "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert proc.returncode == 0, f"ray start failed:\n{proc.stdout}\n{proc.stderr}"
        code = main(["sweep", sweep, "--out", str(tmp_path / "ray"), "--engine", "ray",
                     "--address", f"127.0.0.1:{port}"])
        assert code == 0
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert load(tmp_path / "ray" / "sweep_summary.json")["counts"]["complete"] == 4
    assert main(["report", str(tmp_path / "ray")]) == 0
    local = (tmp_path / "local" / "report" / "table.csv").read_text()
    assert (tmp_path / "ray" / "report" / "table.csv").read_text() == local
    assert (tmp_path / "ray" / "report" / "table.md").read_text() == (tmp_path / "local" / "report" / "table.md").read_text()


# ---------------------------------------------------------------------------- reproduce
def write_reproduce(tmp_path, dataset):
    spec = {"published": {"metric": "average_accuracy", "values": {"finetune": 19.62, "joint": 92.2},
                          "source": "a made-up table for this test"},
            "experiment": {"name": "r", "scenario": {"name": "class_split", "dataset": dataset, "n_experiences": 5,
                                                     "root": str(tmp_path / "no-data")},
                           "model": {"name": "mlp", "args": {"hidden": 32}},
                           "strategy": {"name": "finetune", "lr": 0.05}, "threads": 1},
            "strategies": ["finetune", "joint"],
            "smoke": {"scenario.dataset": "digits", "scenario.train_fraction": 0.3}}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_reproduce_without_data_fails_with_the_data_error(tmp_path, capsys):
    path = write_reproduce(tmp_path, "cifar10")
    assert main(["reproduce", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Dataset 'cifar10' not found" in err and "scenario.download=true" in err


def test_reproduce_smoke_prints_ours_next_to_published(tmp_path, capsys):
    path = write_reproduce(tmp_path, "cifar10")
    out = tmp_path / "out"
    assert main(["reproduce", path, "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {r["label"]: r for r in load(out / "reproduce.json")["rows"]}
    for label, pub in (("finetune", 19.62), ("joint", 92.2)):
        res = load(out / label / "seed0" / "results.json")
        assert res["strategy"] == label and res["scenario"] == "class_split/digits"
        assert res["config"]["strategy"]["lr"] == 0.05       # carried over to joint (a field it has)
        ours = 100 * res["metrics"]["average_accuracy"]
        assert rows[label]["ours"] == pytest.approx(ours) and rows[label]["diff"] == pytest.approx(ours - pub)
        assert f"| {label} | {ours:.2f} | {pub:.2f} | {ours - pub:+.2f} |" in printed
    assert rows["joint"]["ours"] > rows["finetune"]["ours"]     # joint training does not forget
    assert "| finetune |" in (out / "reproduce.md").read_text()


def test_reproduce_list_shows_the_repository_configs(capsys):
    from cl.reproduce import available
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in available():
        assert name in out
    assert "INVALID" not in out


def test_report_of_a_loss_sweep_shows_nats_not_percent(tmp_path):
    """Token scenarios report losses: the table holds the mean/std of the losses as they are (a
    fraction-style x100 would turn 2.5 nats into 250.00) and the plots are the loss ones."""
    from cl.sweep_report import report_sweep
    for label, losses in (("lr-1", (2.5, 2.7)), ("lr-2", (3.0, 3.0))):
        for seed, loss in enumerate(losses):
            d = tmp_path / label / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({
                "status": "complete", "protocol": "train_eval", "strategy": "finetune", "seed": seed,
                "metric": "loss", "loss_matrix": [[loss, 4.0], [loss + 0.5, loss - 1]],
                "metrics": {"average_loss": loss, "average_perplexity": 10.0 + seed}}))
    assert report_sweep(str(tmp_path), hparams=False, echo=lambda *a: None) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert "(%)" not in table
    assert rows["lr-1"][1] == "2.600 ± 0.141" and rows["lr-1"][2] == "10.500 ± 0.707"
    assert rows["lr-2"][1] == "3.000 ± 0.000"
    assert {"average_loss.png", "loss_matrices.png"} <= set(os.listdir(tmp_path / "report" / "plots"))
