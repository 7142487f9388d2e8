"""Class-incremental, instance-incremental and online (blurry) splits; each runs through the runner."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cl.config import load_config
from cl.data import TensorData
from cl.errors import ConfigError
from cl.registry import SCENARIOS
from cl.runner import run
from conftest import quick_overrides
from scenarios.class_split import blurry_split, class_order_for, split_by_class, split_sizes, stratified_chunks


def build(*overrides, seed=0):
    cfg = load_config(None, ["strategy.name=finetune", *overrides])
    return SCENARIOS.get(cfg.scenario.name)(cfg.scenario, seed=seed)


def fake_data(num_classes, per_class):
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return TensorData(torch.zeros(len(y), 1, 2, 2), y)


def run_tiny(tmp_path, *overrides, **extra):
    over = quick_overrides(tmp_path, **{"model.name": "mlp", "model.args": "{hidden: 16}", "strategy.epochs": 1,
                                        "logging.tensorboard": False, "logging.plots": False, "device": "cpu",
                                        "threads": 1, **extra})
    cfg = load_config(None, ["strategy.name=finetune", *overrides, *over])
    return run(cfg, str(tmp_path / "run"))


# ---------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.booleans(), st.integers(0, 10_000), st.integers(0, 3))
def test_every_class_in_exactly_one_experience(per_exp, n_exp, shuffle, seed, first_extra):
    first = per_exp + first_extra if first_extra else 0
    num_classes = per_exp * n_exp + (first_extra if first_extra else 0)
    data = fake_data(num_classes, 3)
    order = class_order_for(num_classes, None, shuffle, seed)
    sizes = split_sizes(num_classes, n_exp, first)
    parts = split_by_class(data, data, order, sizes)
    seen = [c for classes, _, _ in parts for c in classes]
    assert sorted(seen) == list(range(num_classes))           # each class exactly once
    for classes, tr, te in parts:
        assert set(tr.y.tolist()) == set(classes) and set(te.y.tolist()) == set(classes)
    assert class_order_for(num_classes, None, shuffle, seed) == order   # reproducible from the seed


def test_seeded_class_orders_differ_between_seeds():
    orders = {tuple(class_order_for(20, None, True, s)) for s in range(5)}
    assert len(orders) == 5


def test_uneven_first_step_b50_inc10():
    assert split_sizes(100, 6, 50) == [50, 10, 10, 10, 10, 10]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.floats(0.0, 0.9), st.sampled_from(["any", "neighbours"]),
       st.integers(0, 1000))
def test_blurry_split_keeps_every_sample_once(n_exp, per_exp, fraction, spread, seed):
    data = fake_data(n_exp * per_exp, 10)
    parts = [torch.nonzero(torch.isin(data.y, torch.arange(t * per_exp, (t + 1) * per_exp))).flatten()
             for t in range(n_exp)]
    out = blurry_split(data.y, parts, fraction, spread, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.cat(out).sort().values, torch.arange(len(data.y)))
    moved = sum(int((~torch.isin(data.y[o], data.y[p])).sum()) for o, p in zip(out, parts))
    assert moved == n_exp * per_exp * round(fraction * 10)     # round(M * n_c) samples of each class moved
    if spread == "neighbours":
        for t, o in enumerate(out):
            owners = torch.unique(data.y[o] // per_exp).tolist()
            assert all(abs(k - t) <= 1 for k in owners)


def test_stratified_chunks_spread_classes():
    y = torch.arange(4).repeat_interleave(10)
    chunks = stratified_chunks(y, 3, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(chunks).sort().values, torch.arange(40))
    for ch in chunks:
        counts = torch.bincount(y[ch], minlength=4)
        assert counts.min() >= 3 and counts.max() <= 4


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,match", [
    (["scenario.n_experiences=20"], "Cannot split 10 classes"),
    (["scenario.n_experiences=3"], "evenly"),
    (["scenario.class_order=[0,1,2,3,4,5,6,7,8,12]"], "unknown: \\[12\\]"),
    (["scenario.first_classes=5", "scenario.n_experiences=4"], "first experience of 5"),
])
def test_impossible_class_splits(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build("scenario.name=class_split", *overrides)


def test_instance_split_more_experiences_than_samples():
    with pytest.raises(ConfigError, match="smallest class"):
        build("scenario.name=instance_split", "scenario.n_experiences=1000")


def test_online_split_rejects_bad_blurry():
    with pytest.raises(ConfigError, match="blurry"):
        build("scenario.name=online_class_split", "scenario.blurry=1.5")


# ---------------------------------------------------------------------------- scenarios end to end
def test_instance_split_has_all_classes_everywhere():
    s = build("scenario.name=instance_split", "scenario.n_experiences=4")
    sizes = [len(e.train) for e in s.experiences]
    assert sum(sizes) == len(load_train()) and max(sizes) - min(sizes) <= 10
    for e in s.experiences:
        assert set(e.train.y.tolist()) == set(range(10)) and e.classes == list(range(10))


def load_train():
    from scenarios.datasets import load_dataset
    return load_dataset("digits")[0]


def test_online_class_split_options():
    s = build("scenario.name=online_class_split", "scenario.blurry=0.1")
    assert s.epochs == 1 and s.hide_boundaries
    e0 = s.experiences[0]
    foreign = (~torch.isin(e0.train.y, torch.tensor(e0.classes))).float().mean().item()
    assert 0.05 < foreign < 0.15                         # about M = 10% of the samples come from other tasks
    assert set(e0.test.y.tolist()) == set(e0.classes)   # test data stay by class


def test_class_split_runs(tmp_path):
    res = run_tiny(tmp_path, "scenario.name=class_split", "scenario.n_experiences=5", "scenario.shuffle_classes=true")
    assert len(res["accuracy_matrix"]) == 5 and sorted(res["class_order"]) == list(range(10))


def test_instance_split_runs(tmp_path):
    res = run_tiny(tmp_path, "scenario.name=instance_split", "scenario.n_experiences=3", **{"strategy.lr": 0.1})
    R = res["accuracy_matrix"]
    assert len(R) == 3 and all(len(row) == 1 for row in R)   # one shared full test set: one column
    assert res["task_of_experience"] == [0, 0, 0]
    assert R[2][0] > res["initial_accuracy"][0] + 0.05   # new instances of the same classes are learned


def test_online_class_split_runs_one_pass_without_boundaries(tmp_path, monkeypatch):
    from strategies.finetune import Finetune
    calls = {"before": 0, "steps": 0}
    monkeypatch.setattr(Finetune, "before_experience", lambda self, exp: calls.__setitem__("before", 1))
    original = Finetune.train_step

    def count(self, batch):
        calls["steps"] += 1
        return original(self, batch)

    monkeypatch.setattr(Finetune, "train_step", count)
    s = build("scenario.name=online_class_split", "scenario.blurry=0.2")
    res = run_tiny(tmp_path, "scenario.name=online_class_split", "scenario.blurry=0.2",
                   **{"strategy.batch_size": 32})
    assert len(res["accuracy_matrix"]) == 5 and calls["before"] == 0
    assert calls["steps"] == sum(e.train.num_batches(32) for e in s.experiences)   # one pass
    assert res["epochs_per_experience"] == 1 and res["boundaries_visible"] is False


def test_epochs_the_scenario_overrides_are_an_error_not_a_silent_change(tmp_path):
    with pytest.raises(ConfigError, match="strategy.epochs=5 conflicts"):
        run_tiny(tmp_path, "scenario.name=online_class_split", **{"strategy.epochs": 5})
