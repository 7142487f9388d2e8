"""ER, DER++, LwF, online EWC and the CIFAR ResNet-18: behaviour on tiny streams."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.config import load_config
from cl.data import Batch, Experience, TensorData
from cl.errors import ConfigError
from cl.models import build_model
from cl.registry import STRATEGIES
from cl.runner import run
from cl.strategy import StreamInfo
from conftest import QUICKSTART, quick_overrides

REPLAY = ("er", "derpp")
ALL = ("er", "derpp", "lwf", "ewc")


def tiny(tmp_path, strategy, **extra):
    """5 experiences x 2 classes of 3x8x8 uint8 synthetic images, a small MLP, 1 epoch."""
    over = {"scenario.name": "class_split", "scenario.dataset": "synthetic", "model.name": "mlp",
            "model.args": "{hidden: 64}", "threads": 1,
            "strategy.name": strategy, "strategy.epochs": 1, "strategy.batch_size": 16,
            "logging.tensorboard": False, "logging.plots": False, "eval_initial": False}
    if strategy in REPLAY:
        over["strategy.buffer_size"] = 60
    over.update(extra)
    return load_config(None, quick_overrides(tmp_path, **over))


@pytest.mark.parametrize("name", ALL)
def test_every_strategy_runs_through_the_runner(tmp_path, name):
    res = run(tiny(tmp_path, name), str(tmp_path / name))
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == 5
    assert res["accuracy_matrix"][0][0] > 0.3           # learns something (chance: 0.1)
    if name in REPLAY:
        sr = res["strategy_results"]
        assert sr["buffer_filled"] == 60 and sr["buffer_dtype"] == "uint8"
        assert sr["buffer_memory_bytes"] == 60 * 3 * 8 * 8 + 60 * 8 + (60 * 10 * 4 if name == "derpp" else 0)
        assert len(sr["buffer_class_counts"]) == 10     # every class of the stream is in memory


@pytest.mark.parametrize("name", REPLAY)
def test_replay_works_with_hidden_boundaries(tmp_path, name):
    res = run(tiny(tmp_path, name, hide_boundaries=True), str(tmp_path / name))
    assert res["status"] == "complete"
    assert min(res["strategy_results"]["buffer_class_counts"]) > 0


@pytest.mark.parametrize("name", ("lwf", "ewc"))
def test_boundary_methods_refuse_hidden_boundaries_before_training(tmp_path, name):
    with pytest.raises(ConfigError, match="hide_boundaries"):
        run(tiny(tmp_path, name, hide_boundaries=True, **{"scenario.n_experiences": 2}), str(tmp_path / name))
    assert not (tmp_path / name).exists()          # nothing was written


def make(name, model, num_classes=4, **cfg):
    cls = STRATEGIES.get(name)
    s = cls(model, cls.Config(name=name, **cfg), num_classes=num_classes)
    s.setup()
    return s


# ---------------------------------------------------------------------------- ER
def test_er_mixes_a_buffer_batch_and_stores_the_raw_batch():
    from cl.augment import random_crop_flip
    torch.manual_seed(0)
    raw = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    data = TensorData(raw, torch.arange(8) % 4, transform=random_crop_flip(padding=2))
    s = make("er", nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), buffer_size=20, minibatch_size=5)
    plain = s.train_data(Experience(0, data, data, [0, 1, 2, 3]))
    assert plain.transform is None and s.transform is data.transform
    batch = next(plain.batches(8))
    s.train_step(batch)
    assert torch.equal(s.buffer.x[:8], raw)             # non-augmented inputs stored as uint8
    seen = []
    s.model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    s.loss(batch)
    assert seen == [8 + 5]                               # one forward on current + buffer batch


# ---------------------------------------------------------------------------- DER++
def test_derpp_stores_pre_update_logits_and_uses_both_terms():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    s = make("derpp", model, buffer_size=50, alpha=0.3, beta=0.5, lr=0.1)
    x, y = torch.rand(10, 6), torch.arange(10) % 4
    with torch.no_grad():
        before = model(x).clone()
    s.train_step(Batch(x, y))
    assert torch.allclose(s.buffer.logits[:10], before)  # logits of the network before this step's update
    x2, y2 = torch.rand(10, 6), torch.arange(10) % 4
    torch.manual_seed(1)
    s.buffer.generator.manual_seed(7)
    total = s.loss(Batch(x2, y2))
    s.buffer.generator.manual_seed(7)
    bx1, _, bz1, _ = s.buffer.sample(32)
    bx2, by2, _, _ = s.buffer.sample(32)
    expected = F.cross_entropy(model(x2), y2) + 0.3 * F.mse_loss(model(bx1), bz1) + 0.5 * F.cross_entropy(model(bx2), by2)
    assert torch.allclose(total, expected)


# ---------------------------------------------------------------------------- LwF
def test_lwf_distillation_is_zero_at_the_snapshot_and_positive_away():
    from strategies.lwf import distillation_loss
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))
    s = make("lwf", model)
    d = TensorData(torch.rand(6, 5), torch.tensor([0, 1, 0, 1, 0, 1]))
    s.before_experience(Experience(0, d, d, [0, 1]))
    s.after_experience(Experience(0, d, d, [0, 1]))
    x = torch.rand(16, 5)
    assert s.old_classes == [0, 1]
    with torch.no_grad():
        assert float(distillation_loss(model(x), s.teacher(x), s.old_classes, 2.0)) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model[2].weight[:2] += torch.randn(2, 8)
    kd = distillation_loss(model(x), s.teacher(x), [0, 1], 2.0)
    # hand-computed: KL(softmax(t/2) || softmax(s/2)) over columns 0, 1, batch mean
    q, p = F.softmax(s.teacher(x)[:, :2] / 2, 1), F.softmax(model(x)[:, :2] / 2, 1)
    assert float(kd.detach()) > 1e-4 and torch.allclose(kd, (q * (q / p).log()).sum(1).mean())
    s.before_experience(Experience(1, d, d, [2, 3]))
    y = torch.tensor([2, 3] * 8)
    expected = F.cross_entropy(model(x), y) + 3.0 * kd  # seen classes are all 4 here; alpha 3 (Mammoth)
    assert torch.allclose(s.loss(Batch(x, y)), expected, atol=1e-6)


def test_lwf_teacher_sees_the_clean_batch_student_the_augmented_one():
    """Mammoth's teacher logits come from the not-augmented image (models/lwf.py begin_task,
    ``__getitem__(j)[2]``); the student is trained on the augmented one."""
    from strategies.lwf import distillation_loss
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    s = make("lwf", model)
    flip = lambda x, generator: x.flip(-1)                  # a deterministic "augmentation"
    d0 = TensorData(torch.rand(6, 6), torch.tensor([0, 1] * 3), transform=flip)
    s.after_experience(Experience(0, d0, d0, [0, 1]))       # teacher = this model
    with torch.no_grad():
        model[2].weight.add_(torch.randn(4, 8))             # the student moves away
    d1 = TensorData(torch.rand(8, 6), torch.tensor([2, 3] * 4), transform=flip)
    batch = next(s.train_data(Experience(1, d1, d1, [2, 3])).batches(8))
    clean = d1.x
    with torch.no_grad():
        student = model(clean.flip(-1))
        expected = F.cross_entropy(student, d1.y) + 3.0 * distillation_loss(student, s.teacher(clean), [0, 1], 2.0)
        wrong = F.cross_entropy(student, d1.y) + 3.0 * distillation_loss(student, s.teacher(clean.flip(-1)), [0, 1], 2.0)
        got = s.loss(batch)
    assert not torch.allclose(expected, wrong, atol=1e-4)  # the test can tell the two apart
    assert torch.allclose(got, expected, atol=1e-6)


def test_lwf_weight_decay_equals_mammoth_wd_reg_in_the_loss():
    """Mammoth (7ab9db9, models/lwf.py:93) adds wd_reg * sum(w ** 2) to the loss with wd_reg 5e-4
    (best_args seq-cifar10) and steps plain SGD: one of our steps must give the same weights."""
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double()
    ref = nn.Linear(5, 4).double()
    ref.load_state_dict(model.state_dict())
    s = make("lwf", model)
    x, y = torch.rand(8, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3] * 2)
    s.train_step(Batch(x, y))
    loss = F.cross_entropy(ref(x), y) + 5e-4 * sum((p ** 2).sum() for p in ref.parameters())
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.01 * p.grad                             # Mammoth seq-cifar10: SGD, lr 0.01, no momentum
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- EWC
def ewc_after_one_experience(**cfg):
    """(model, strategy, data): EWC with ``cfg`` on a seeded 3 -> 2 linear model, after the end of
    one experience of 20 random examples (two classes)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    s = make("ewc", model, **cfg)
    d = TensorData(torch.rand(20, 3), torch.arange(20) % 2)
    s.after_experience(Experience(0, d, d, [0, 1]))
    return model, s, d


def test_ewc_penalty_zero_at_anchor_positive_away_and_hand_computed():
    model, s, _ = ewc_after_one_experience(e_lambda=10.0)
    assert float(s.penalty().detach()) == 0.0
    with torch.no_grad():
        model.weight[0, 0] += 0.5
    expected = 10.0 * s.fisher["weight"][0, 0] * 0.25
    assert float(s.penalty().detach()) > 0 and torch.allclose(s.penalty(), expected)


def test_ewc_fisher_is_confidence_weighted_per_example_gradient_squared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    s = make("ewc", model, num_classes=3, fisher_batch_size=3)
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    fisher = s.estimate_fisher(TensorData(x, y))
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(7):                                  # Mammoth ewc_on: sum p(y|x) * grad(log p(y|x))^2 / N
        model.zero_grad()
        ll = F.log_softmax(model(x[i:i + 1]), 1)[0, y[i]]
        ll.backward()
        for n, p in model.named_parameters():
            ref[n] += ll.exp().detach() * p.grad ** 2 / 7
    for n in ref:
        assert torch.allclose(fisher[n], ref[n], atol=1e-6), n


def mammoth_fisher(model, x, y, train):
    """Mammoth's ewc_on.end_task loop (one example at a time, autograd) on a copy of ``model``."""
    import copy
    net = copy.deepcopy(model).train(train)
    fish = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(y)):
        net.zero_grad()
        ll = F.log_softmax(net(x[i:i + 1]), 1)[0, y[i]]
        ll.backward()
        for n, p in net.named_parameters():
            fish[n] += ll.exp().detach() * p.grad ** 2 / len(y)
    return fish


def test_ewc_fisher_in_train_mode_like_mammoth_and_model_untouched():
    """Mammoth's end_task runs with net.train(): each single example is normalised by BatchNorm with
    its own statistics. Our Fisher must equal that loop's, and leave the model as it was."""
    import copy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():                               # running stats far from any one example's
        model[1].running_mean.fill_(2.0)
        model[1].running_var.fill_(9.0)
    s = make("ewc", model, num_classes=3, fisher_batch_size=4)
    x, y = torch.randn(7, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    before = copy.deepcopy(model.state_dict())
    fisher = s.estimate_fisher(TensorData(x, y))
    for k, v in model.state_dict().items():             # weights and running statistics untouched
        assert torch.equal(v, before[k]), k
    train_ref, eval_ref = mammoth_fisher(model, x, y, True), mammoth_fisher(model, x, y, False)
    for n in train_ref:
        assert torch.allclose(fisher[n], train_ref[n], atol=1e-6), n
    assert not torch.allclose(train_ref["0.weight"], eval_ref["0.weight"], atol=1e-4)   # eval mode would differ


def test_ewc_online_accumulation_decays_with_gamma():
    _, s, d = ewc_after_one_experience(gamma=0.5)
    f1 = s.fisher["weight"].clone()
    s.after_experience(Experience(1, d, d, [0, 1]))     # same data, same weights: F* = 0.5 F + F
    assert torch.allclose(s.fisher["weight"], 1.5 * f1)


# ---------------------------------------------------------------------------- paper claims, resume
@pytest.mark.slow
def test_er_beats_finetune_on_digits_class_il(tmp_path):
    """Chaudhry et al. 2019 / DER Table 2: replay is far above fine-tuning in class-IL."""
    over = quick_overrides(tmp_path, **{"strategy.epochs": 5, "strategy.lr": 0.1, "logging.tensorboard": False,
                                        "logging.plots": False, "eval_initial": False, "threads": 1})
    ft = run(load_config(QUICKSTART, over + ["strategy.name=finetune"]), str(tmp_path / "ft"))
    er = run(load_config(QUICKSTART, over + ["strategy.name=er", "strategy.buffer_size=200"]), str(tmp_path / "er"))
    assert ft["metrics"]["average_accuracy"] < 0.3       # catastrophic forgetting (only the last 2 classes)
    print("finetune", ft["metrics"], "er", er["metrics"])
    assert er["metrics"]["average_accuracy"] > ft["metrics"]["average_accuracy"] + 0.3
    assert er["metrics"]["forgetting"] < ft["metrics"]["forgetting"] - 0.3


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", ("derpp", "ewc"))
def test_resume_restores_buffer_and_strategy_state(tmp_path, monkeypatch, name):
    cfg = tiny(tmp_path, name)
    full = run(cfg, str(tmp_path / "full"))
    cls = STRATEGIES.get(name)
    original = cls.train_data

    def crash_at_2(self, exp):
        if exp.index == 2:
            raise Crash()
        return original(self, exp)

    monkeypatch.setattr(cls, "train_data", crash_at_2)
    with pytest.raises(Crash):
        run(cfg, str(tmp_path / "killed"))
    monkeypatch.setattr(cls, "train_data", original)
    resumed = run(cfg, str(tmp_path / "killed"), resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["strategy_results"] == full["strategy_results"]


# ---------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("name,nf", (("resnet18_cifar", 64), ("resnet18_cifar_reduced", 20)))
def test_cifar_resnet18_shapes_and_feature_split(name, nf):
    from omegaconf import OmegaConf
    from cl.config import ModelConfig
    net = build_model(OmegaConf.structured(ModelConfig(name=name)), 10, (3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    feats = net.features(x)
    assert feats.shape == (2, 8 * nf) and isinstance(net.classifier, nn.Linear)
    assert torch.allclose(net(x), net.classifier(feats))
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == (11_173_962 if nf == 64 else 1_094_750)


def test_er_buffer_update_experience_fills_at_the_end_with_distinct_examples(tmp_path):
    from cl.errors import ConfigError
    from cl.registry import SCENARIOS
    from omegaconf import OmegaConf
    cfg = load_config(None, ["scenario.name=class_split", "scenario.dataset=digits", "scenario.n_experiences=5",
                             "strategy.name=er", "strategy.buffer_size=1000", "strategy.buffer_update=experience",
                             "strategy.epochs=3"])
    scen = SCENARIOS.get("class_split")(OmegaConf.to_object(cfg.scenario), seed=0)
    s = STRATEGIES.get("er")(build_model(cfg.model, scen.num_classes, scen.input_shape),
                             OmegaConf.to_object(cfg.strategy), stream=StreamInfo.of(scen, cfg.strategy.batch_size, 3))
    s.setup()
    exp = scen.experiences[0]
    s.before_experience(exp)
    for _ in range(3):
        for b in s.train_data(exp).batches(32, shuffle=True):
            s.train_step(b)
    assert len(s.buffer) == 0                                  # nothing stored during the experience
    s.after_experience(exp)
    x, y, _ = s.buffer.get_all()
    assert len(y) == len(exp.train)                            # each distinct example once (capacity allows)
    from cl.data import to_float
    stored = sorted(tuple(r) for r in x.reshape(len(y), -1).tolist())
    raw = sorted(tuple(r) for r in to_float(exp.train.x).reshape(len(y), -1).tolist())
    assert stored == raw                                       # the raw (un-augmented) examples
    with pytest.raises(ConfigError, match="buffer_update"):
        STRATEGIES.get("er")(build_model(cfg.model, 10, scen.input_shape),
                             OmegaConf.to_object(cfg.strategy).__class__(buffer_update="epoch"), num_classes=10)
