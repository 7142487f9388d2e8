"""Defects of issue 13 that lived between the runner and the strategies, each pinned by a test that
failed before the contract (FPF schedule vs the runner's epochs, recurring tasks weighed by their
recurrences, test_subsample shortening the online stream, protocol mismatches)."""
import json

import pytest

from cl.config import load_config
from cl.errors import ConfigError
from cl.runner import build, run
from conftest import QUICKSTART, quick_overrides

QUIET = {"logging.tensorboard": False, "logging.plots": False, "eval_initial": False}


def online_split(tmp_path, strategy, **extra):
    over = {"scenario.name": "online_class_split", "scenario.dataset": "synthetic", "scenario.n_experiences": 2,
            "scenario.dataset_args.num_classes": 4, "scenario.dataset_args.n_train": 24,
            "scenario.dataset_args.n_test": 8, "model.name": "small_cnn", "model.args": "{width: 4}",
            "strategy.name": strategy, "strategy.batch_size": 8, **QUIET, **extra}
    over.pop("strategy.lr", None)
    return load_config(None, quick_overrides(tmp_path, **over))


def test_fpf_runs_on_a_scenario_that_fixes_the_epochs(tmp_path):
    res = run(online_split(tmp_path, "fpf", **{"strategy.base": "er", "strategy.fpf_steps": 2}), str(tmp_path / "a"))
    assert res["epochs_per_experience"] == 1 and res["strategy_results"]["fpf_runs"] == 1


def test_kfpf_runs_k_times_over_the_runners_steps(tmp_path):
    res = run(online_split(tmp_path, "kfpf", **{"strategy.k": 3, "strategy.fpf_steps": 1}), str(tmp_path / "a"))
    assert res["strategy_results"]["fpf_runs"] == 3


@pytest.mark.parametrize("name", ["fpf", "kfpf"])
def test_epochs_the_scenario_overrides_stop_fpf_runs_before_training(tmp_path, name):
    with pytest.raises(ConfigError, match="strategy.epochs=5 conflicts"):
        run(online_split(tmp_path, name, **{"strategy.epochs": 5}), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_power_law_recurrences_are_one_column_per_task(tmp_path):
    over = {"scenario.name": "power_law", "scenario.tasks": "class_split", "scenario.dataset": "digits",
            "scenario.n_tasks": 5, "scenario.rehearsals": 1, "model.name": "mlp", "strategy.name": "finetune",
            "strategy.lr": 0.05, **QUIET}
    res = run(load_config(None, quick_overrides(tmp_path, **over)), str(tmp_path / "pl"))
    R, trained = res["accuracy_matrix"], res["task_of_experience"]
    assert len(R) == 5 * 2 and all(len(row) == 5 for row in R)        # 5 new tasks, each followed by 1 rehearsal
    assert sorted(set(trained)) == [0, 1, 2, 3, 4] and len(res["tasks"]) == 5
    first = {j: trained.index(j) for j in range(5)}
    expect = sum(R[-1]) / 5                                            # every task counts once
    assert res["metrics"]["average_accuracy"] == pytest.approx(expect)
    expect_f = [max(R[l][j] for l in range(first[j], len(R) - 1)) - R[-1][j] for j in range(5) if first[j] <= len(R) - 2]
    assert res["metrics"]["forgetting"] == pytest.approx(sum(expect_f) / len(expect_f))


def test_test_subsample_never_shortens_the_online_stream(tmp_path):
    over = {"scenario.name": "synthetic_shift", "scenario.n_per_class": 8, "model.name": "small_cnn",
            "strategy.name": "bn", "strategy.batch_size": 8, "test_subsample": 0.25, "eval_all_domains": True, **QUIET}
    over.pop("eval_initial")
    cfg = load_config(None, quick_overrides(tmp_path, **over))
    built = build(cfg)
    stream = sum(len(e.test) for e in built.scenario.experiences)
    assert all(len(t.test) == 8 for t in built.tasks)                  # evaluation sets: 25% of 32
    res = run(cfg, str(tmp_path / "a"))
    assert res["completed_experiences"] == 3 and stream == 3 * 32      # the whole stream was adapted on
    assert res["timings"]["per_experience_s"] and len(res["domain_accuracy_matrix"]) == 3


def test_protocol_mismatch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="online protocol"):
        build(load_config(QUICKSTART, quick_overrides(tmp_path, **{"strategy.name": "tent"})))


def test_intransigence_against_a_reference_run(tmp_path):
    base = {"scenario.n_experiences": 2, **QUIET}
    joint = run(load_config(QUICKSTART, quick_overrides(tmp_path, **{**base, "strategy.name": "joint"})),
                str(tmp_path / "joint"))
    res = run(load_config(QUICKSTART, quick_overrides(tmp_path, **{**base, "reference_run": tmp_path / "joint" / "results.json"})),
              str(tmp_path / "ft"))
    R, J = res["accuracy_matrix"], joint["accuracy_matrix"]
    assert res["metrics"]["intransigence"] == pytest.approx(((J[0][0] - R[0][0]) + (J[1][1] - R[1][1])) / 2)
    (tmp_path / "bad.json").write_text(json.dumps({"accuracy_matrix": [[1.0]]}))
    with pytest.raises(ConfigError, match="reference run"):
        build(load_config(QUICKSTART, quick_overrides(tmp_path, **{**base, "reference_run": tmp_path / "bad.json"})))
