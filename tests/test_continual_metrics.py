"""Continual-evaluation metrics (cl.continual_metrics) on hand-computed curves."""
import pytest
import torch

from cl.continual_metrics import (eval_subsets, min_acc, stability_gaps, summarize_curves, wc_acc, wc_acc_series,
                                  windowed_forgetting, windowed_plasticity)
from cl.data import Experience, TensorData

# Three tasks, one trained per experience. Task 0: learned to 0.9, drops to 0.4 at the first
# boundary, recovers to 0.95, drops to 0.7 at the second and ends at 0.8 (not recovered).
CURVE = [
    {"step": 1, "experience": 0, "accuracy": [0.5]},
    {"step": 2, "experience": 0, "accuracy": [0.9]},
    {"step": 3, "experience": 1, "accuracy": [0.4, 0.3]},
    {"step": 4, "experience": 1, "accuracy": [0.6, 0.7]},
    {"step": 5, "experience": 1, "accuracy": [0.95, 0.8]},
    {"step": 6, "experience": 2, "accuracy": [0.7, 0.2, 0.5]},
    {"step": 7, "experience": 2, "accuracy": [0.8, 0.6, 0.9]},
]


def as_loss(curve):
    return [{**r, "accuracy": [1 - a for a in r["accuracy"]]} for r in curve]


def test_min_acc_counts_only_records_after_the_task_was_learned():
    # task 0: min over steps 3..7 = 0.4 (the 0.5 at step 1, while training it, does not count);
    # task 1: min over steps 6, 7 = 0.2; task 2 is never evaluated while another task trains.
    assert min_acc(CURVE) == pytest.approx({0: 0.4, 1: 0.2})
    assert min_acc(as_loss(CURVE), higher_is_better=False) == pytest.approx({0: 0.6, 1: 0.8})


def test_wc_acc_series_and_final_value():
    # step 3: (0.3 + 0.4) / 2; step 6: (0.5 + 0.4 + 0.2) / 3; step 7: (0.9 + 0.4 + 0.2) / 3
    expected = [0.5, 0.9, 0.35, 0.55, 0.6, 1.1 / 3, 0.5]
    assert [v for _, v in wc_acc_series(CURVE)] == pytest.approx(expected)
    assert wc_acc(CURVE) == pytest.approx(0.5)
    assert wc_acc(as_loss(CURVE), higher_is_better=False) == pytest.approx(0.5)   # mean of 1 - x
    assert wc_acc([]) is None


def test_wc_acc_uses_the_recorded_task_when_it_differs_from_the_experience():
    curve = [{"step": 1, "experience": 0, "task": 0, "accuracy": [0.9, 0.1]},
             {"step": 2, "experience": 1, "task": 1, "accuracy": [0.5, 0.6]},
             {"step": 3, "experience": 2, "task": 0, "accuracy": [0.7, 0.3]}]   # task 0 recurs
    # task 1 is "not trained" at steps 1 and 3: min(0.1, 0.3); task 0 only at step 2: 0.5
    assert min_acc(curve) == pytest.approx({0: 0.5, 1: 0.1})
    assert wc_acc(curve) == pytest.approx((0.7 + 0.1) / 2)


def test_windowed_forgetting_depends_on_the_window():
    curve = [{"step": s, "experience": 0, "accuracy": [a]} for s, a in enumerate([1.0, 0.9, 0.8, 0.7])]
    # a window of w evaluations compares values at most w - 1 apart
    assert [windowed_forgetting(curve, w)[0] for w in (1, 2, 3, 4, 10)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.3])
    assert windowed_plasticity(curve, 10)[0] == 0.0         # floored at 0: it never rises


def test_windowed_forgetting_and_plasticity_on_the_curve():
    # task 0 series 0.5 0.9 0.4 0.6 0.95 0.7 0.8; task 1: 0.3 0.7 0.8 0.2 0.6; task 2: 0.5 0.9
    assert windowed_forgetting(CURVE, 2) == pytest.approx({0: 0.5, 1: 0.6, 2: 0.0})
    assert windowed_plasticity(CURVE, 2) == pytest.approx({0: 0.4, 1: 0.4, 2: 0.4})
    # all pairs: task 0 rises from 0.4 to 0.95 (the authors' shortcut, which skips window starts
    # below an earlier value of the window, would give 0.45)
    assert windowed_plasticity(CURVE, 10) == pytest.approx({0: 0.55, 1: 0.5, 2: 0.4})
    assert windowed_forgetting(as_loss(CURVE), 2, higher_is_better=False) == pytest.approx({0: 0.5, 1: 0.6, 2: 0.0})
    with pytest.raises(ValueError):
        windowed_forgetting(CURVE, 0)


def test_stability_gaps_depth_length_and_recovery():
    gaps = stability_gaps(CURVE)
    assert [(g["task"], g["experience"]) for g in gaps] == [(0, 1), (0, 2), (1, 2)]
    g01, g02, g12 = gaps
    # task 0 at the first boundary: 0.9 at step 2 -> 0.4 at step 3, back to >= 0.9 at step 5
    assert (g01["before"], g01["worst"], g01["worst_step"], g01["boundary_step"]) == (0.9, 0.4, 3, 2)
    assert g01["depth"] == pytest.approx(0.5) and g01["length"] == 3
    assert g01["recovered_fraction"] == pytest.approx(0.55 / 0.5)
    # second boundary: 0.95 -> 0.7, ends at 0.8: not recovered
    assert g02["depth"] == pytest.approx(0.25) and g02["length"] is None
    assert g02["recovered_fraction"] == pytest.approx(0.4)
    assert g12["depth"] == pytest.approx(0.6) and g12["length"] is None
    loss = stability_gaps(as_loss(CURVE), higher_is_better=False)
    assert [g["depth"] for g in loss] == pytest.approx([0.5, 0.25, 0.6]) and loss[0]["length"] == 3


def test_no_drop_is_a_gap_of_depth_zero():
    curve = [{"step": 1, "experience": 0, "accuracy": [0.8]}, {"step": 2, "experience": 1, "accuracy": [0.85, 0.5]}]
    (g,) = stability_gaps(curve)
    assert g["depth"] == 0 and g["length"] == 0


def test_summary_scalars():
    scalars, details = summarize_curves(CURVE, windows=(2, 10))
    assert scalars["min_acc"] == pytest.approx(0.3)
    assert scalars["wc_acc"] == pytest.approx(0.5)
    assert scalars["wf2"] == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    assert scalars["wp10"] == pytest.approx((0.55 + 0.5 + 0.4) / 3)
    assert scalars["gap_depth"] == pytest.approx((0.5 + 0.6) / 2)   # first gap of tasks 0 and 1
    assert details["min_acc"][:2] == pytest.approx([0.4, 0.2]) and details["min_acc"][2] is None
    assert details["first_gap"][2] is None
    assert summarize_curves([]) == ({}, {})


def test_eval_subsets_are_fixed_and_seeded():
    exps = [Experience(index=i, train=None, test=TensorData(torch.arange(50.0)[:, None] + 100 * i,
                                                            torch.zeros(50, dtype=torch.long)), classes=[0])
            for i in range(3)]
    a, b = eval_subsets(exps, 10, seed=0), eval_subsets(exps, 10, seed=0)
    assert all(len(e.test) == 10 for e in a)
    assert all(torch.equal(x.test.x, y.test.x) for x, y in zip(a, b))
    assert not torch.equal(a[0].test.x, eval_subsets(exps, 10, seed=1)[0].test.x)
    assert not torch.equal(a[0].test.x - 0, a[1].test.x - 100)          # each task draws its own subset
    assert all(set(e.test.x.flatten().tolist()) <= set(o.test.x.flatten().tolist()) for e, o in zip(a, exps))
    assert eval_subsets(exps, 0, seed=0)[0] is exps[0] and eval_subsets(exps, 80, seed=0)[1] is exps[1]


def test_runner_records_on_fixed_subsets_and_reports_the_metrics(tmp_path, capsys):
    from cl.config import load_config
    from cl.runner import run
    from conftest import quick_overrides
    over = {"scenario.name": "class_split", "scenario.dataset": "synthetic", "scenario.n_experiences": 3,
            "scenario.classes": "[0,1,2,3,4,5]", "scenario.dataset_args": "{n_train: 50, n_test: 30}",
            "model.name": "mlp", "model.args": "{hidden: 16}", "threads": 1, "strategy.name": "finetune",
            "strategy.epochs": 2, "strategy.batch_size": 20, "strategy.lr": 0.1, "eval_every": 3,
            "eval_subset": 20, "logging.tensorboard": False, "logging.console": True}
    res = run(load_config(None, quick_overrides(tmp_path, **over)), str(tmp_path / "run"))
    curves = res["continual_eval"]
    # 100 samples / 20 per batch x 2 epochs = 10 steps per experience: every 3rd step, plus the
    # last step of each experience (10, 20, 30) so that the value at the boundary is known
    assert [c["step"] for c in curves] == [3, 6, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30]
    assert [len(c["accuracy"]) for c in curves] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(abs(a * 20 - round(a * 20)) < 1e-9 for c in curves for a in c["accuracy"])   # 20 samples
    scalars, details = summarize_curves(curves)
    assert {k: res["metrics"][k] for k in scalars} == pytest.approx(scalars)
    assert res["continual_metrics"]["min_acc"] == details["min_acc"]
    assert res["timings"]["continual_eval_s"] > 0
    assert (tmp_path / "run" / "plots" / "continual_eval.png").is_file()
    assert "Continual evaluation (12 records" in capsys.readouterr().out
    from benchmarks.stability_gap_report import main as report
    report([str(tmp_path), "--out", str(tmp_path / "fig.png")])
    out = capsys.readouterr().out
    assert f"| run | {100 * res['metrics']['average_accuracy']:.1f} | {100 * scalars['min_acc']:.1f} |" in out
    assert (tmp_path / "fig.png").is_file()


def test_report_averages_seeds():
    from benchmarks.stability_gap_report import seed_table
    keys = ("average_accuracy", "min_acc", "wc_acc", "wf10", "wp10", "gap_depth")
    runs = [("a", {"metrics": dict.fromkeys(keys, v)}) for v in (0.1, 0.3)] + [("b", {"metrics": dict.fromkeys(keys, 0.5)})]
    lines = seed_table(runs).splitlines()
    assert lines[2] == "| a | " + " | ".join(["20.0 ± 14.1 (2)"] * 6) + " |"     # sd of 10 and 30
    assert lines[3] == "| b | " + " | ".join(["50.0"] * 6) + " |"
