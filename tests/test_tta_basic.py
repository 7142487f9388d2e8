"""Source, BN-1 and Tent on the online protocol: what each may change, and that adapting helps.

A tiny CNN is trained on the labelled source data of the ``synthetic_shift`` scenario; its test
stream shifts brightness and noise per domain, which BatchNorm re-normalization can undo.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl import io
from cl.config import ModelConfig, load_config
from cl.models import build_model
from cl.registry import SCENARIOS, STRATEGIES
from cl.runner import run
from cl.strategy import StreamInfo
from conftest import quick_overrides

SHIFT = {"scenario.name": "synthetic_shift", "scenario.n_domains": 3, "scenario.num_classes": 4,
         "scenario.n_per_class": 64, "scenario.shift": 0.3}
MODEL = ModelConfig(name="small_cnn", args={"width": 8})


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory):
    """A small_cnn trained on the scenario's source data, saved as a state_dict."""
    cfg = load_config(None, [f"{k}={v}" for k, v in SHIFT.items()] + ["strategy.name=source"])
    sc = SCENARIOS.get("synthetic_shift")(cfg.scenario, seed=0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny model: one thread is faster than two on a busy machine
    net = build_model(MODEL, sc.num_classes, sc.input_shape)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for b in sc.source.batches(64, shuffle=True, generator=g):
            opt.zero_grad()
            F.cross_entropy(net(b.x), b.y).backward()
            opt.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("src") / "source.pt"
    io.torch_save(net.state_dict(), path)
    return str(path)


def make_strategy(name, ckpt, **cfg_over):
    cfg = load_config(None, [f"{k}={v}" for k, v in SHIFT.items()] + [f"strategy.name={name}"]
                      + [f"strategy.{k}={v}" for k, v in cfg_over.items()])
    sc = SCENARIOS.get("synthetic_shift")(cfg.scenario, seed=0)
    net = build_model(ModelConfig(name=MODEL.name, args=dict(MODEL.args), checkpoint=ckpt),
                      sc.num_classes, sc.input_shape)
    s = STRATEGIES.get(name)(net, cfg.strategy, stream=StreamInfo.of(sc, cfg.strategy.batch_size))
    s.setup(source=sc.source)
    return s, sc


def params(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def stream(sc, bs=64):
    for exp in sc.experiences:
        yield from exp.test.batches(bs)


def test_source_never_changes_weights(source_ckpt):
    s, sc = make_strategy("source", source_ckpt)
    before = copy.deepcopy(s.model.state_dict())
    for b in stream(sc):
        s.adapt(b.x)
    after = s.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)   # running stats included
    assert s.optimizer is None and s.updates == 0


def test_tent_updates_only_bn_affine_parameters(source_ckpt):
    s, sc = make_strategy("tent", source_ckpt)
    before = params(s.model)
    for b in stream(sc):
        s.adapt(b.x)
    after = params(s.model)
    bn_names = {f"{n}.{p}" for n, m in s.model.named_modules() if isinstance(m, nn.BatchNorm2d)
                for p in ("weight", "bias")}
    assert bn_names and s.updates == 3 * 4            # 3 domains x 256 samples / 64
    for k in before:
        if k in bn_names:
            assert not torch.equal(before[k], after[k]), f"{k} should have been adapted"
        else:
            assert torch.equal(before[k], after[k]), f"{k} must stay frozen"
    assert [p for g in s.optimizer.param_groups for p in g["params"]] == \
        [p for n, p in s.model.named_parameters() if n in bn_names]


def test_tent_is_entropy_gradient_step():
    """One Tent step equals a hand-written Adam step on the mean softmax entropy."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ref = copy.deepcopy(net)
    cfg = STRATEGIES.config_of("tent")()
    s = STRATEGIES.get("tent")(net, cfg, num_classes=3)
    s.setup()
    x = torch.rand(16, 3, 8, 8)
    logits = s.adapt(x)
    ref.train()
    bn = ref[1]
    opt = torch.optim.Adam([bn.weight, bn.bias], lr=1e-3, betas=(0.9, 0.999))
    out = ref(x)
    p = out.softmax(1)
    (-(p * p.log()).sum(1).mean()).backward()
    opt.step()
    assert torch.allclose(logits, out.detach(), atol=1e-6)     # prediction from before the step
    assert torch.allclose(net[1].weight, bn.weight, atol=1e-7)
    assert torch.allclose(net[1].bias, bn.bias, atol=1e-7)


def test_bn_output_equals_manual_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    bn = net[1]
    with torch.no_grad():   # source statistics far from the test batch's, so a mix-up would show
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(9.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    conv, w, b, lin = copy.deepcopy(net[0]), bn.weight.detach().clone(), bn.bias.detach().clone(), copy.deepcopy(net[5])
    s = STRATEGIES.get("bn")(net, STRATEGIES.config_of("bn")(), num_classes=3)
    s.setup()
    x = torch.rand(8, 3, 6, 6) * 2 + 1
    with torch.no_grad():
        h = conv(x)
        mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + bn.eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        expected = lin(F.relu(h).mean((2, 3)))
    got = s.adapt(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(s.predict(x), expected, atol=1e-5)    # eval mode also uses batch stats
    assert not any(p.requires_grad for p in net.parameters()) and s.optimizer is None
    assert torch.equal(net[1].weight, w)


def test_bn_and_tent_beat_source_on_shifted_stream(source_ckpt, tmp_path):
    errors = {}
    for name in ("source", "bn", "tent"):
        over = {**SHIFT, "strategy.name": name, "model.name": MODEL.name, "model.args.width": 8,
                "model.checkpoint": source_ckpt, "strategy.batch_size": 64, "name": name,
                "logging.tensorboard": False, "logging.plots": False}
        res = run(load_config(None, quick_overrides(tmp_path, **over)), str(tmp_path / name))
        assert res["status"] == "complete"
        errors[name] = res["metrics"]["mean_error"]
    assert errors["source"] > 0.4                     # the shift hurts the source model
    assert errors["bn"] < errors["source"] - 0.2, errors
    assert errors["tent"] < errors["source"] - 0.2, errors


def test_reset_each_shift_restores_initial_weights(source_ckpt, tmp_path, monkeypatch):
    from strategies.tent import Tent
    seen = []
    original = Tent.forward_and_adapt

    def record(self, x):
        seen.append(params(self.model))
        return original(self, x)

    monkeypatch.setattr(Tent, "forward_and_adapt", record)
    firsts = {}
    for reset in (True, False):
        seen.clear()
        over = {**SHIFT, "scenario.n_domains": 2, "scenario.reset_each_shift": reset, "strategy.name": "tent",
                "model.name": MODEL.name, "model.args.width": 8, "model.checkpoint": source_ckpt,
                "strategy.batch_size": 64, "strategy.lr": 0.01, "name": f"reset{reset}",
                "logging.tensorboard": False, "logging.plots": False}
        run(load_config(None, quick_overrides(tmp_path, **over)), str(tmp_path / f"r{reset}"))
        assert len(seen) == 8                          # 2 domains x 4 batches
        firsts[reset] = (seen[0], seen[3], seen[4])    # start, last batch of domain 0, start of domain 1
    initial, late, second = firsts[True]
    assert any(not torch.equal(initial[k], late[k]) for k in initial)       # it adapted in domain 0
    assert all(torch.equal(initial[k], second[k]) for k in initial)         # and was reset at the shift
    initial, _, second = firsts[False]
    assert any(not torch.equal(initial[k], second[k]) for k in initial)     # no reset: carries over


def test_tent_without_norm_layers_is_a_clear_error():
    from cl.errors import ConfigError
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    s = STRATEGIES.get("tent")(net, STRATEGIES.config_of("tent")(), num_classes=3)
    with pytest.raises(ConfigError, match="BatchNorm"):
        s.setup()
