"""Mean teacher, CoTTA and RMT on tiny models and the synthetic shifted stream."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cl.config import build_config
from cl.errors import ConfigError
from cl.models import InputNormalize
from cl.models.features import classifier_head, features_and_logits
from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins
from cl.runner import run
from cl.strategy import StreamInfo
from strategies._tta_augment import CottaAugment
from conftest import quick_overrides

load_builtins()


def scenario(n_per_class=16):
    cfg = OmegaConf.structured(SCENARIOS.config_of("synthetic_shift")(n_per_class=n_per_class))
    return SCENARIOS.get("synthetic_shift")(cfg, seed=0)


def make(name, scen=None, **overrides):
    """A set-up strategy on small_cnn (8x8 images, 4 classes)."""
    scen = scen if scen is not None else scenario()
    torch.manual_seed(0)
    model = MODELS.get("small_cnn")(num_classes=scen.num_classes, input_shape=scen.input_shape, width=8)
    cfg = OmegaConf.structured(STRATEGIES.config_of(name)(**overrides))
    strategy = STRATEGIES.get(name)(model, cfg, stream=StreamInfo.of(scen, cfg.batch_size))
    strategy.setup(source=scen.source)
    return strategy


def batches(scen, n=2, bs=32, domain=2):
    return [b.x for b in scen.experiences[domain].test.batches(bs)][:n]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------------- mean teacher
def test_ema_teacher_follows_exact_update():
    scen = scenario()
    s = make("mean_teacher", scen, ema_momentum=0.9, lr=0.05)
    teacher_before = params(s.teacher)
    s.adapt(batches(scen, 1)[0])
    student_after = params(s.model)
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, student_after))
    for t0, st, t1 in zip(teacher_before, student_after, s.teacher.parameters()):
        assert torch.equal(t1, 0.9 * t0 + (1 - 0.9) * st)
    assert s.updates == 1


def test_mean_teacher_trains_all_weights_with_batch_statistics():
    s = make("mean_teacher")
    bns = [m for m in s.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_mean is None for m in bns)
    assert len(s.parameters_to_train()) == len(list(s.model.parameters()))
    before = params(s.model)
    s.adapt(batches(scenario(), 1)[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, s.model.parameters()))


def test_bad_consistency_is_config_error():
    with pytest.raises(ConfigError, match="consistency"):
        make("mean_teacher", consistency="kl")


# ---------------------------------------------------------------------------- CoTTA
def restored_fraction(rst):
    scen = scenario()
    s = make("cotta", scen, rst=rst, lr=0.05, n_augmentations=0)
    src = [p.clone() for p in s.source_weights]
    torch.manual_seed(1)
    s.adapt(batches(scen, 1)[0])
    equal = sum(int((p == w).sum()) for p, w in zip(s.parameters_to_train(), src))
    return equal / sum(w.numel() for w in src)


def test_cotta_stochastic_restore_fraction():
    assert restored_fraction(0.0) < 0.02          # every weight moved
    assert 0.45 < restored_fraction(0.5) < 0.56   # ~rst of the elements back at the source value
    assert restored_fraction(1.0) == 1.0


@pytest.mark.parametrize("ap,augmented", [(0.0, False), (1.0, True)])
def test_cotta_uses_augmented_mean_exactly_below_ap(ap, augmented):
    scen = scenario()
    s = make("cotta", scen, ap=ap, n_augmentations=3)
    x = batches(scen, 1)[0]
    teacher = copy.deepcopy(s.teacher)
    torch.manual_seed(5)
    out = s.adapt(x)
    assert s.last_used_augmented is augmented
    with torch.no_grad():
        clean = teacher(x)
        torch.manual_seed(5)
        aug = CottaAugment(8)
        views = torch.stack([teacher(aug(x)) for _ in range(3)]).mean(0)
    assert torch.equal(out, views if augmented else clean)
    assert not torch.allclose(views, clean)


def test_cotta_reset_restores_student_teacher_and_keeps_anchor():
    scen = scenario()
    s = make("cotta", scen, n_augmentations=2, lr=0.05)
    model0, teacher0, anchor0 = params(s.model), params(s.teacher), params(s.anchor)
    src0 = [w.clone() for w in s.source_weights]
    for x in batches(scen, 2):
        s.adapt(x)
    assert not all(torch.equal(a, b) for a, b in zip(teacher0, s.teacher.parameters()))
    s.reset()
    for ref, mod in ((model0, s.model), (teacher0, s.teacher), (anchor0, s.anchor)):
        assert all(torch.equal(a, b) for a, b in zip(ref, mod.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(src0, s.source_weights))
    assert s.updates == 0


@pytest.mark.parametrize("name,kw", [("cotta", {"n_augmentations": 2, "rst": 0.1}),
                                     ("rmt", {"warmup_samples": 64, "batch_size": 32})])
def test_state_dict_round_trip_continues_identically(name, kw):
    scen = scenario()
    xs = batches(scen, 4, bs=32, domain=1) + batches(scen, 4, bs=32, domain=2)
    a = make(name, scen, lr=0.01, **kw)
    for x in xs[:2]:
        a.adapt(x)
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(9)
    out_a = [a.adapt(x) for x in xs[2:4]]
    b = make(name, scen, lr=0.01, **kw)
    b.load_state_dict(state)
    torch.manual_seed(9)
    out_b = [b.adapt(x) for x in xs[2:4]]
    assert all(torch.equal(u, v) for u, v in zip(out_a, out_b))
    assert all(torch.equal(u, v) for u, v in zip(a.teacher.parameters(), b.teacher.parameters()))


@pytest.mark.slow
def test_cotta_runs_in_runner_and_checks_config(tmp_path):
    cfg = build_config({"name": "c", "scenario": {"name": "synthetic_shift", "n_per_class": 8, "n_domains": 2},
                        "model": {"name": "small_cnn", "args": {"width": 8}},
                        "strategy": {"name": "cotta", "n_augmentations": 2, "batch_size": 16}},
                       OmegaConf.from_dotlist(quick_overrides(tmp_path, **{"logging.tensorboard": False,
                                                                           "logging.plots": False})))
    res = run(cfg, str(tmp_path / "run"))
    assert res["status"] == "complete"
    errors = res["per_domain_error"]                 # fractions of each domain's 8 x 4 = 32 images
    assert list(errors) == ["shift0", "shift1"]
    for e in errors.values():
        assert 0.0 <= e <= 1.0 and e * 32 == pytest.approx(round(e * 32), abs=1e-9)
    assert res["metrics"]["mean_error"] == pytest.approx(sum(errors.values()) / 2)
    with pytest.raises(ConfigError, match="rst"):
        make("cotta", rst=1.5)


# ---------------------------------------------------------------------------- RMT
class Untouchable:
    """Source data that fails the test when anything of it is used."""

    def __getattr__(self, name):
        raise AssertionError(f"source data was accessed ({name})")

    def __len__(self):
        raise AssertionError("source data was accessed (len)")


class NoSource:
    """A scenario whose source data (handed to the strategy) must not be touched."""

    def __init__(self, scen):
        self._scen = scen

    def __getattr__(self, name):
        if name == "source":
            return Untouchable()
        return getattr(self._scen, name)


def test_rmt_losses_finite_and_everything_trains():
    scen = scenario()
    s = make("rmt", scen, warmup_samples=64, batch_size=32)
    assert s.src_pos == 2 and s.prototypes.shape == (4, 16)        # 64 // 32 warm-up batches
    model0, proj0 = params(s.model), params(s.projector)
    for x in batches(scen, 2):
        out = s.adapt(x)
    assert set(s.last_losses) == {"self_training", "contrastive", "source_ce"}
    assert all(torch.isfinite(v) for v in s.last_losses.values()) and torch.isfinite(out).all()
    assert s.src_pos == 4                                            # one replay batch per step
    assert not any(torch.equal(a, b) for a, b in zip(proj0, s.projector.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(model0, s.model.parameters()))


def test_rmt_prediction_is_student_plus_teacher():
    scen = scenario()
    s = make("rmt", scen, warmup_samples=0, lambda_ce_src=0.0)
    x = batches(scen, 1)[0]
    model, teacher = copy.deepcopy(s.model), copy.deepcopy(s.teacher)
    out = s.adapt(x)
    with torch.no_grad():
        assert torch.allclose(out, model(x) + teacher(x), atol=1e-5)


def test_rmt_source_free_never_touches_source():
    scen = NoSource(scenario())
    s = make("rmt", scen, lambda_ce_src=0.0, warmup_samples=0, prototypes="classifier")
    for x in batches(scen._scen, 2):
        s.adapt(x)
    assert "source_ce" not in s.last_losses and torch.isfinite(s.last_losses["contrastive"])


def test_rmt_without_source_data_is_config_error():
    scen = scenario()
    scen.source = None
    with pytest.raises(ConfigError, match="source-free"):
        make("rmt", scen)
    with pytest.raises(ConfigError, match="source-free"):
        make("rmt", scen, lambda_ce_src=0.0, warmup_samples=10)


def test_rmt_reset_returns_to_warmed_up_state():
    scen = scenario()
    s = make("rmt", scen, warmup_samples=64, batch_size=32, lr=0.01)
    warmed, teacher, proj = params(s.model), params(s.teacher), params(s.projector)
    for x in batches(scen, 2):
        s.adapt(x)
    s.reset()
    for ref, mod in ((warmed, s.model), (teacher, s.teacher), (proj, s.projector)):
        assert all(torch.equal(a, b) for a, b in zip(ref, mod.parameters()))


# ---------------------------------------------------------------------------- helpers
class WithFc(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.mark.parametrize("net", [WithFc(), InputNormalize(WithFc(), [0.5] * 3, [0.2] * 3),
                                 MODELS.get("small_cnn")(num_classes=3, input_shape=(3, 8, 8))])
def test_features_and_logits_split(net):
    x = torch.rand(5, 3, 8, 8)
    f, z = features_and_logits(net, x)
    assert torch.allclose(classifier_head(net)(f), z) and torch.allclose(z, net(x))
    assert not classifier_head(net)._forward_pre_hooks            # the hook is removed


def test_classifier_head_missing_is_config_error():
    with pytest.raises(ConfigError, match="fc"):
        classifier_head(nn.Identity())


def test_cotta_augment_is_seeded_batched_and_in_range():
    x = torch.rand(6, 3, 8, 8)
    aug = CottaAugment(8)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x, atol=0.01)
    with pytest.raises(ConfigError, match="image"):
        aug(torch.rand(4, 10))


def test_batch_norm_groups_equals_one_pass_per_group():
    from strategies.tta_base import batch_norm_groups, use_batch_statistics
    torch.manual_seed(0)
    net = MODELS.get("small_cnn")(num_classes=4, input_shape=(3, 8, 8), width=8)
    use_batch_statistics(net)
    for m in net.modules():                      # non-trivial affine parameters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    xs = [torch.rand(5, 3, 8, 8) + k for k in range(3)]   # groups with different statistics
    with torch.no_grad():
        separate = torch.stack([net(x) for x in xs])
        whole = net(torch.cat(xs)).view(3, 5, -1)       # one pass, statistics over all groups
        with batch_norm_groups(net, 3):
            grouped = net(torch.cat(xs)).view(3, 5, -1)
        after = net(xs[0])
    assert torch.allclose(grouped, separate, atol=1e-5)
    assert not torch.allclose(whole, separate, atol=1e-3)   # the grouping is what makes them equal
    assert torch.equal(after, separate[0])                  # the layers' own forward is back
    assert all("forward" not in vars(m) for m in net.modules())


def test_cotta_batched_views_equal_one_pass_per_view():
    scen = scenario()
    x = batches(scen, 1)[0]
    outs = []
    for k in (1, 3):
        s = make("cotta", scen, ap=1.0, n_augmentations=3, views_per_forward=k)
        torch.manual_seed(5)
        outs.append((s.adapt(x), [p.detach().clone() for p in s.model.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outs[0][1], outs[1][1]))
    with pytest.raises(ConfigError, match="views_per_forward"):
        make("cotta", scen, views_per_forward=-1)
