"""Multi-label targets through the platform: data type, split, buffer, runner, results, refusals."""
import json
import os

import pytest
import torch

from cl.buffer import ReplayBuffer
from cl.config import load_config
from cl.data import TensorData, concat
from cl.errors import ConfigError
from cl.multilabel import step_metrics, task_map
from cl.registry import SCENARIOS, load_builtins
from cl.runner import build, run
from conftest import REPO, quick_overrides

ML = os.path.join(REPO, "experiments", "multilabel", "synthetic_mosaic.yaml")


def _scenario(**kw):
    load_builtins()
    cfg = SCENARIOS.config_of("multilabel_split")(**{"dataset": "synthetic_mosaic", "n_train": 60, "n_test": 40,
                                                     "increment": 2, **kw})
    return SCENARIOS.get("multilabel_split")(cfg, seed=0)


def test_tensordata_keeps_multihot_targets_through_batches_and_concat():
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    d = TensorData(torch.zeros(3, 2), y)
    assert d.multilabel and d.y.dtype == torch.float32 and d.y.shape == (3, 3)
    b = next(d.batches(2, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert b.y.shape == (2, 3) and b.y.dtype == torch.float32
    both = concat([d, d.subset([0])])
    assert both.y.shape == (4, 3) and both.y[3].tolist() == [1, 0, 1]
    assert not TensorData(torch.zeros(3, 2), torch.tensor([0, 1, 2])).multilabel


def test_split_assigns_by_labels_and_hides_other_tasks_labels():
    s = _scenario()
    assert s.label_type == "multi" and s.metric == "map" and len(s.experiences) == 3
    full = s.test_all.y
    for e in s.experiences:
        other = [c for c in range(6) if c not in e.classes]
        assert e.train.y[:, e.classes].sum(1).min() >= 1          # every sample holds a label of its task
        assert e.train.y[:, other].sum() == 0                     # labels of other tasks hidden in training
        assert e.test.y[:, e.classes].sum(1).min() >= 1
        # the test set is every test sample with a label of the task, and keeps all its labels
        assert len(e.test) == int((full[:, e.classes].sum(1) > 0).sum())
        assert e.test.y[:, other].sum() > 0
    # samples with labels of two tasks are in both (mosaics of 4 tiles: plenty)
    assert sum(len(e.test) for e in s.experiences) > len(s.test_all)


def test_buffer_stores_multilabel_samples():
    buf = ReplayBuffer(4, device="cpu", generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(6, 3, 4, 4), torch.tensor([[1., 0, 1]] * 3 + [[0., 1, 0]] * 3)
    buf.add(x, y)
    bx, by, _, idx = buf.sample(4)
    assert by.shape == (4, 3) and by.dtype == torch.float32
    assert set(map(tuple, by.tolist())) <= {(1., 0., 1.), (0., 1., 0.)}
    assert buf.class_counts().sum() == int(buf.y[:4].sum())
    state = buf.state_dict()
    other = ReplayBuffer(4)
    other.load_state_dict(state)
    assert torch.equal(other.y, buf.y)
    with pytest.raises(ConfigError, match="reservoir"):
        ReplayBuffer(4, policy="class_balanced").add(x, y)


@pytest.mark.parametrize("strategy", ["finetune", "er"])
def test_run_writes_map_matrix_and_step_metrics(tmp_path, strategy):
    res = run(load_config(ML, quick_overrides(tmp_path, **{"strategy.name": strategy, "strategy.epochs": 2,
                                                           "logging.plots": strategy == "er",
                                                           "logging.tensorboard": False})), str(tmp_path / "r"))
    M = res["map_matrix"]
    assert len(M) == 3 and len(M[0]) == 3 and "accuracy_matrix" not in res
    m = res["metrics"]
    assert m["map"] == pytest.approx(res["map_per_step"][-1])
    assert m["average_map"] == pytest.approx(sum(res["map_per_step"]) / 3)
    assert m["forgetting"] == pytest.approx(((max(M[0][0], M[1][0]) - M[2][0]) + (M[1][1] - M[2][1])) / 2)
    assert all(0 <= v <= 1 for v in res["cf1_per_step"] + res["of1_per_step"])
    if strategy == "er":
        assert any(f == "map_matrix.png" for _, _, fs in os.walk(tmp_path / "r") for f in fs)
    with open(tmp_path / "r" / "results.json") as f:
        assert json.load(f)["metric"] == "map"


def test_row_equals_direct_computation(tmp_path):
    r = build(load_config(ML, quick_overrides(tmp_path, **{"strategy.name": "finetune"})))
    from cl.runner import RunState, multilabel_row, predict_all
    r.state = RunState.new(r.scenario)
    row = multilabel_row(r, 1)
    scores, targets = predict_all(r.strategy, r.scenario.test_all, r.device)
    assert row[2] == pytest.approx(task_map(scores, targets, r.scenario.experiences[2].classes))
    # task column j: the task's own test set gives the same value
    e = r.scenario.experiences[0]
    s0, t0 = predict_all(r.strategy, e.test, r.device)
    assert row[0] == pytest.approx(task_map(s0, t0, e.classes))
    assert r.state.steps[0] == pytest.approx(step_metrics(scores, targets, [0, 1, 2, 3]))


def test_single_label_strategy_refuses_multilabel_scenario(tmp_path):
    cfg = load_config(ML, quick_overrides(tmp_path, **{"strategy.name": "lwf"}))
    with pytest.raises(ConfigError, match="single class labels only"):
        run(cfg, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")


class Crash(Exception):
    pass


def test_resume_of_a_multilabel_er_run_matches_uninterrupted(tmp_path, monkeypatch):
    from cl.cli import main
    from strategies.er import ER
    cfg = load_config(ML, quick_overrides(tmp_path, **{"strategy.epochs": 1, "logging.tensorboard": False,
                                                       "strategy.buffer_size": 40}))
    full = run(cfg, str(tmp_path / "full"))
    original = ER.before_experience

    def crash_at_3(self, exp):
        if exp.index == 2:
            raise Crash()
        return original(self, exp)

    monkeypatch.setattr(ER, "before_experience", crash_at_3)
    with pytest.raises(Crash):
        run(cfg, str(tmp_path / "killed"))
    monkeypatch.setattr(ER, "before_experience", original)
    assert main(["run", "--resume", str(tmp_path / "killed"), "logging.console=false"]) == 0
    with open(tmp_path / "killed" / "results.json") as f:
        resumed = json.load(f)
    assert resumed["status"] == "complete"
    assert resumed["map_matrix"] == full["map_matrix"] and resumed["map_per_step"] == full["map_per_step"]
    assert resumed["metrics"]["average_map"] == pytest.approx(full["metrics"]["average_map"])
