"""NMC (Janson et al. 2022), FPF and k-FPF (Zhao et al., ICML 2023) and the frozen-feature cache."""
import copy

import pytest
import torch
import torch.nn.functional as F

from cl.buffer import ReplayBuffer
from cl.config import load_config
from cl.data import Experience, TensorData
from cl.errors import ConfigError
from strategies._features import Backbone, FeatureCache
from cl.models.resnet18 import resnet18_cifar
from cl.models.small import mlp, small_cnn
from cl.runner import run
from strategies.fpf import FPF, FPFConfig, fpf_finetune, select_modules
from strategies.kfpf import periodic_schedule
from strategies.nmc import NMC, NMCConfig

N_EXP = 5


def run_cfg(tmp_path, name, **over):
    """A tiny synthetic class_split run: 10 classes, ~50 train / 50 test images each, 3x8x8."""
    base = {"scenario.name": "class_split", "scenario.dataset": "synthetic", "scenario.n_experiences": N_EXP,
            "model.name": "small_cnn", "model.args": "{width: 8}", "strategy.name": name, "device": "cpu",
            "output_dir": str(tmp_path), "logging.progress": False, "logging.console": False,
            "logging.tensorboard": False, "logging.plots": False, "strategy.batch_size": 16, "threads": 1,
            "scenario.train_fraction": 0.5}
    base.update(over)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def small_synthetic_scenario_sizes(cfg):
    from cl.runner import build
    scenario = build(cfg).scenario
    return sum(len(e.train) for e in scenario.experiences), sum(len(e.test) for e in scenario.experiences)


# ---------------------------------------------------------------------------- NMC
def test_nmc_class_means_are_means_of_normalized_features():
    torch.manual_seed(0)
    model = mlp(4, (1, 4, 4), hidden=8)
    nmc = NMC(model, NMCConfig(), num_classes=4)
    nmc.setup()
    x, y = torch.rand(30, 1, 4, 4), torch.tensor([0, 1, 2] * 10)   # class 3 never seen
    exp = Experience(0, TensorData(x, y), TensorData(x[:9], y[:9]), classes=[0, 1, 2])
    data = nmc.train_data(exp)
    for _epoch in range(3):                          # extra epochs must not change anything
        for batch in data.batches(7, shuffle=True, generator=torch.Generator().manual_seed(1)):
            nmc.train_step(batch)
    with torch.no_grad():
        feats = F.normalize(model[:-1](x).flatten(1), dim=1)       # the model minus its head, by hand
    means, seen = nmc.class_means()
    for c in range(3):
        assert torch.allclose(means[c], feats[y == c].mean(0), atol=1e-6)
    assert seen.tolist() == [True, True, True, False]
    assert nmc.counts.tolist() == [10, 10, 10, 0]                  # each image counted once
    assert nmc.cache.computed == 30                                # one backbone pass per image
    # nearest (Euclidean) mean prediction; cached and uncached evaluation agree
    hand = torch.cdist(feats[:9], means[:3]).argmin(1)
    assert torch.equal(nmc.predict(x[:9]).argmax(1), hand)
    logits, labels = next(nmc.predict_data(exp.test, 64, "cpu"))
    assert torch.allclose(logits, nmc.predict(x[:9]), atol=1e-5) and torch.equal(labels, y[:9])
    assert not any(p.requires_grad for p in model.parameters()) and nmc.parameters_to_train() == []


def test_nmc_accuracy_matrix_costs_one_backbone_pass_per_image(tmp_path, monkeypatch):
    seen = []
    original = Backbone.forward

    def counting(self, x):
        seen.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Backbone, "forward", counting)
    cfg = run_cfg(tmp_path, "nmc", **{"strategy.epochs": 3, "eval_initial": True})
    n_train, n_test = small_synthetic_scenario_sizes(cfg)
    res = run(cfg, str(tmp_path / "nmc"))
    R = res["accuracy_matrix"]
    assert len(R) == N_EXP and all(len(r) == N_EXP for r in R)
    assert sum(seen) == n_train + n_test          # not (1 + N_EXP) * n_test + 3 * n_train
    assert res["strategy_results"]["classes_with_mean"] == 10
    assert R[-1][0] > 0.9 and res["metrics"]["average_accuracy"] > 0.9   # separable prototypes


def test_nmc_task_free_equals_with_boundaries(tmp_path):
    a = run(run_cfg(tmp_path, "nmc"), str(tmp_path / "a"))
    b = run(run_cfg(tmp_path, "nmc", hide_boundaries=True), str(tmp_path / "b"))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


def test_backbone_split_rules():
    x = torch.rand(2, 3, 8, 8)
    cnn = small_cnn(5, (3, 8, 8))
    assert Backbone(cnn).kind == "sequential" and Backbone(cnn)(x).shape == (2, 32)
    res = resnet18_cifar(5, (3, 8, 8), nf=4)
    assert Backbone(res).kind == "features_method"
    assert torch.equal(Backbone(res)(x), res.features(x))
    cache = FeatureCache(Backbone(cnn), batch_size=1)
    data = TensorData((x * 255).to(torch.uint8), torch.tensor([0, 1]))
    cache.get(data), cache.get(data)
    assert cache.computed == 2 and data in cache


# ---------------------------------------------------------------------------- FPF
def filled_buffer(n=40, shape=(3, 8, 8), classes=5):
    buf = ReplayBuffer(32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    buf.add(torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))
    return buf


@pytest.mark.parametrize("specs,changed", [
    (["bn", "head"], lambda k: ".bn" in k or k.startswith("bn1") or "shortcut.1" in k or k.startswith("classifier")),
    (["layer4.1"], lambda k: k.startswith("layer4.1.")),
])
def test_fpf_changes_only_the_named_modules(specs, changed):
    torch.manual_seed(0)
    model = resnet18_cifar(5, (3, 8, 8), nf=4)
    model.train()
    before = copy.deepcopy(model.state_dict())
    fpf_finetune(model, select_modules(model, specs), filled_buffer(), steps=3, lr=0.5, batch_size=16)
    after = model.state_dict()
    n_changed = 0
    for k, v in before.items():
        if changed(k):
            if not k.endswith("num_batches_tracked") and v.dtype.is_floating_point:
                assert not torch.equal(v, after[k]), f"{k} should have been finetuned"
                n_changed += 1
        else:
            assert torch.equal(v, after[k]), f"{k} changed but is not in {specs}"
    assert n_changed > 0
    assert model.training and all(p.requires_grad for p in model.parameters())   # modes and flags restored


def test_fpf_bad_config_is_a_clear_error():
    model = small_cnn(4, (3, 8, 8))
    with pytest.raises(ConfigError, match="fpf_modules"):
        select_modules(model, ["layer9"])
    with pytest.raises(ConfigError, match="base_args"):
        FPF(model, FPFConfig(base="er", base_args={"alpah": 0.1}), num_classes=4)
    with pytest.raises(ConfigError, match="bn"):
        select_modules(mlp(4, (1, 4, 4)), ["bn"])


@pytest.mark.parametrize("base,when,runs", [("er", "end", 1), ("finetune", "experience", N_EXP)])
def test_fpf_end_to_end(tmp_path, base, when, runs):
    cfg = run_cfg(tmp_path, "fpf", **{"strategy.base": base, "strategy.fpf_when": when, "strategy.fpf_steps": 5,
                                     "strategy.lr": 0.05, "strategy.base_args": "{buffer_size: 50}" if base == "er" else "{}",
                                     "strategy.buffer_size": 50})
    res = run(cfg, str(tmp_path / base))
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == N_EXP
    assert res["strategy_results"]["fpf_runs"] == runs
    assert res["strategy_results"]["buffer_capacity"] == 50


# ---------------------------------------------------------------------------- k-FPF
def test_periodic_schedule_has_k_runs_ending_at_the_last_step():
    for total, k in [(100, 10), (7, 3), (3, 5)]:
        s = periodic_schedule(total, k)
        assert sum(s.values()) == k and max(s) == total


def test_kfpf_runs_fpf_exactly_k_times_and_beats_finetune(tmp_path, monkeypatch):
    import strategies.kfpf as kfpf_module
    calls = []
    original = kfpf_module.fpf_finetune

    def counting(*args, **kwargs):
        calls.append(kwargs["kd_alpha"])
        return original(*args, **kwargs)

    monkeypatch.setattr(kfpf_module, "fpf_finetune", counting)
    over = {"strategy.lr": 0.05, "strategy.epochs": 2, "hide_boundaries": True}
    res = run(run_cfg(tmp_path, "kfpf", **over, **{"strategy.k": 4, "strategy.kd": True, "strategy.fpf_steps": 40,
                                                  "strategy.fpf_lr": 0.1, "strategy.buffer_size": 100}),
              str(tmp_path / "kfpf"))
    assert len(calls) == 4 and res["strategy_results"]["fpf_runs"] == 4 and all(a > 0 for a in calls)
    ft = run(run_cfg(tmp_path, "finetune", **over), str(tmp_path / "ft"))
    # the paper's claim in miniature: replay-free SGD + k FPF runs forgets less than plain SGD
    assert res["metrics"]["average_accuracy"] > ft["metrics"]["average_accuracy"] + 0.15


def test_timm_vit_backbone_is_the_cls_token_of_forward_features():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    x = torch.rand(2, 3, 16, 16)
    bb = Backbone(vit, input_size=32)                         # resized 16 -> 32 first
    assert bb.kind == "timm"
    with torch.no_grad():
        ref = vit.forward_features(F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True))[:, 0]
        assert torch.allclose(bb(x), ref, atol=1e-5)        # the NMC authors' feature
