"""Every file under experiments/ (experiments, sweeps, reproduce configs) runs end to end in smoke
mode (cl.smoke: one epoch, tiny test sets, the file's `smoke:` stand-in or the generic synthetic
one), so a broken experiment file fails CI the day it breaks."""
import glob
import json
import math
import os

import pytest

from cl.smoke import kind_of, run_file
from conftest import REPO

FILES = sorted(glob.glob(os.path.join(REPO, "experiments", "**", "*.yaml"), recursive=True))


def test_experiment_files_are_found():
    assert any(f.endswith("quickstart.yaml") for f in FILES)
    assert any(os.sep + "sweeps" + os.sep in f for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, os.path.join(REPO, "experiments")) for f in FILES])
def test_experiment_file_runs_in_smoke_mode(path, tmp_path):
    from cl.config import load_yaml
    kind = kind_of(path, load_yaml(path))
    out = run_file(path, str(tmp_path))
    if kind == "experiment":
        assert out["status"] == "complete"
        assert out["metrics"] and all(v is None or math.isfinite(v) for v in out["metrics"].values())
        return
    runs = out["runs"]
    assert runs and all(r["status"] == "complete" for r in runs)
    for r in runs:
        with open(os.path.join(tmp_path, r["run_dir"], "results.json")) as f:
            res = json.load(f)
        assert res["status"] == "complete" and res["metrics"]
    if kind == "sweep":       # the sweep report renders: tables and the protocol's plots
        from cl.sweep_report import report_sweep
        assert report_sweep(str(tmp_path), hparams=False, echo=lambda *a: None) == 0
        results = [json.load(open(os.path.join(tmp_path, r["run_dir"], "results.json"))) for r in runs]
        protocols = {"loss" if res.get("metric") == "loss" else res["protocol"] for res in results}
        plots = set(os.listdir(os.path.join(tmp_path, "report", "plots")))
        if "online" in protocols:
            assert {"mean_error.png", "domain_errors.png"} <= plots
        if "train_eval" in protocols:
            assert {"average_accuracy.png", "accuracy_matrices.png"} <= plots
        if "loss" in protocols:
            assert {"average_loss.png", "loss_matrices.png"} <= plots
    if kind == "reproduce":
        spec = load_yaml(path)
        metric = spec["published"]["metric"]
        labels = {row["label"] for row in out["comparison"]}
        assert labels == {r["label"] for r in runs}
        measured = {}                       # the metric read back from each run's own results.json, in %
        for r in runs:
            with open(os.path.join(tmp_path, r["run_dir"], "results.json")) as f:
                measured.setdefault(r["label"], []).append(100 * json.load(f)["metrics"][metric])
        for row in out["comparison"]:
            ours = sum(measured[row["label"]]) / len(measured[row["label"]])
            assert row["ours"] == pytest.approx(ours) and 0 <= ours <= 100, (metric, row)
            pub = spec["published"]["values"].get(row["label"])
            assert row["published"] == pub
            assert row["diff"] == (None if pub is None else pytest.approx(ours - pub))


def test_reproduce_comparison_on_a_hand_made_sweep(tmp_path):
    """cl.reproduce.compare on two runs of one label and one of another, values chosen by hand."""
    from cl.reproduce import compare
    runs = []
    for i, (label, acc) in enumerate([("a", 0.5), ("a", 0.7), ("b", 0.25)]):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "results.json").write_text(json.dumps({"metrics": {"average_accuracy": acc}}))
        runs.append({"label": label, "status": "complete", "run_dir": f"r{i}"})
    spec = {"name": "t", "published": {"metric": "average_accuracy", "values": {"a": 55.5}}}
    rows = {r["label"]: r for r in compare(spec, {"runs": runs}, str(tmp_path))}
    assert rows["a"]["ours"] == pytest.approx(60.0) and rows["a"]["diff"] == pytest.approx(4.5) and rows["a"]["n"] == 2
    assert rows["b"]["ours"] == pytest.approx(25.0) and rows["b"]["published"] is None and rows["b"]["diff"] is None


# The authors' settings each reproduce file must set (value, the authors' file it comes from).
AUTHORS_SETTINGS = {
    "dualprompt_imagenet_r.yaml": {          # JH-LEE-KR/dualprompt-pytorch configs/imr_dualprompt.py
        "lr": 0.005 * 24 / 256,              # --lr 0.005, scaled by batch / 256 in main.py
        "epochs": 50, "batch_size": 24, "e_length": 20, "batchwise_prompt": False,
        "shared_prompt_pool": True, "shared_prompt_key": False, "eval_batch_size": 24},
    "multi_lane_coco_b0_c10.yaml": {         # tdemin16/multi-lane multi_lane/configs/coco.py (lr x batch/256 in main.py)
        "lr": 0.03 * 128 / 256, "batch_size": 128, "epochs": 30, "num_selectors": 20, "num_prompts": 20,
        "num_prompt_layers": 5},
    "multi_lane_voc_b0_c4.yaml": {           # multi_lane/configs/voc.py
        "lr": 0.05 * 256 / 256, "batch_size": 256, "epochs": 30, "num_selectors": 10, "num_prompts": 10,
        "num_prompt_layers": 5},
    "lae_imagenet_r.yaml": {                 # gqk/LAE config/base/imagenet-r_order1.yaml
        "lr": 0.00046875, "epochs": 50, "batch_size": 24, "freeze_epochs": 30, "ema_decay": 0.9999},
}


@pytest.mark.parametrize("name", sorted(AUTHORS_SETTINGS))
def test_reproduce_files_set_the_authors_settings(name):
    from cl.config import build_config, load_yaml
    cfg = build_config(load_yaml(os.path.join(REPO, "experiments", "reproduce", name))["experiment"])
    for key, value in AUTHORS_SETTINGS[name].items():
        assert cfg.strategy[key] == pytest.approx(value), (name, key)


def test_smoke_rule_stand_in_and_replacement():
    """Without `smoke:`, an unbundled dataset becomes `synthetic` with a split that fits 10 classes;
    a `smoke:` key replaces its node whole; strategy keys a strategy lacks are skipped."""
    from cl.config import build_config
    from cl.smoke import apply_smoke
    exp = {"scenario": {"name": "class_split", "dataset": "cifar100", "n_experiences": 6, "first_classes": 50},
           "model": {"name": "mlp", "args": {"hidden": 7}}, "strategy": {"name": "finetune", "epochs": 50}}
    cfg = build_config(*apply_smoke([exp]))
    assert (cfg.scenario.dataset, cfg.scenario.n_experiences, cfg.scenario.first_classes) == ("synthetic", 5, 0)
    assert cfg.strategy.epochs == 1 and cfg.test_subsample == 0.1 and not cfg.logging.tensorboard
    assert cfg.model.args == {"hidden": 7}
    cfg = build_config(*apply_smoke([exp], {"scenario.dataset": "digits", "scenario.first_classes": 0,
                                            "scenario.n_experiences": 5, "model.args": {},
                                            "strategy.warmup_samples": 3}))
    assert cfg.scenario.dataset == "digits" and cfg.model.args == {} and "warmup_samples" not in cfg.strategy
    quick = {"scenario": {"name": "class_split", "dataset": "digits"}, "strategy": {"name": "finetune"}}
    assert build_config(*apply_smoke([quick])).scenario.dataset == "digits"   # bundled: kept
