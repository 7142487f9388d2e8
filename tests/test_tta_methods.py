"""The test-time adaptation methods of the RMT authors' benchmark (issue 16): which parameters each
one trains, that the frozen ones stay, and hand-computed values of their losses and rules.

Every method runs on ``small_cnn`` (8x8 images, 4 classes) and the ``synthetic_shift`` stream; the
side-by-side equality with the authors' code is ``benchmarks/tta_reference.py --check``.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cl.errors import ConfigError
from cl.strategy import StreamInfo
from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins

load_builtins()

NORM = "norm"          # BatchNorm affine weight/bias
ALL = "all"            # every weight and bias
NONE = "none"
# name -> (overrides, what it trains). Margins are widened where the method filters samples, so
# that a barely trained model still takes steps.
METHODS = {
    "bn": ({}, NONE),
    "eata": ({"margin_e0": 1.0, "d_margin": 1.0, "lr": 0.01}, NORM),
    "sar": ({"margin_e0": 1.0, "lr": 0.05, "reset_constant_em": 0.0}, NORM),
    "rpl": ({"lr": 0.01}, NORM),
    "deyo": ({"margin": 1.0, "plpd": -1.0, "lr": 0.01}, NORM),
    "roid": ({"lr": 0.01}, NORM),
    "cmf": ({"lr": 0.01}, NORM),
    "lame": ({}, NONE),
    "rotta": ({"update_frequency": 16, "memory_size": 16, "lr": 0.01}, NORM),
    "santa": ({"lr": 0.01}, NORM),
    "gtta": ({"lr": 0.01}, ALL),
    "adacontrast": ({"queue_size": 64, "lr": 0.01}, ALL),
    "ttaug": ({"n_augmentations": 2}, NONE),
    "memo": ({"n_augmentations": 2, "episodic": False}, ALL),
}


def scenario(n_per_class=8):
    cfg = OmegaConf.structured(SCENARIOS.config_of("synthetic_shift")(n_per_class=n_per_class))
    return SCENARIOS.get("synthetic_shift")(cfg, seed=0)


def make(name, scen=None, model=None, **overrides):
    scen = scen if scen is not None else scenario()
    torch.manual_seed(0)
    if model is None:
        model = MODELS.get("small_cnn")(num_classes=scen.num_classes, input_shape=scen.input_shape, width=8)
    cfg = OmegaConf.structured(STRATEGIES.config_of(name)(**overrides))
    s = STRATEGIES.get(name)(model, cfg, stream=StreamInfo.of(scen, cfg.batch_size))
    s.setup(source=scen.source)
    return s


def batches(scen, n=2, bs=16, domain=2):
    return [b.x for b in scen.experiences[domain].test.batches(bs)][:n]


def snapshot(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_exactly_its_parameters(name):
    overrides, trains = METHODS[name]
    scen = scenario()
    s = make(name, scen, **overrides)
    before = snapshot(s.model)
    bn_params = {k for k in before if k.startswith(("1.", "5."))}     # small_cnn's two BatchNorm layers
    for x in batches(scen):
        out = s.adapt(x)
        assert out.shape == (len(x), scen.num_classes) and torch.isfinite(out).all()
    after = snapshot(s.model)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {NONE: set(), NORM: bn_params, ALL: set(before)}[trains]
    assert changed == expected, f"{name} changed {sorted(changed)}, expected {sorted(expected)}"
    trained = {id(p) for p in s.parameters_to_train()}
    assert all(p.requires_grad == (id(p) in trained) for p in s.model.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reset_restores_the_initial_weights(name):
    overrides, trains = METHODS[name]
    scen = scenario()
    s = make(name, scen, **overrides)
    before = snapshot(s.model)
    for x in batches(scen):
        s.adapt(x)
    s.reset()
    assert all(torch.equal(before[k], v) for k, v in snapshot(s.model).items())


@pytest.mark.parametrize("name", ["eata", "santa", "gtta"])
def test_source_methods_need_source_data(name):
    scen = scenario()
    scen.source = None
    with pytest.raises(ConfigError, match="source"):
        make(name, scen)


def test_eta_needs_no_source_data():
    scen = scenario()
    scen.source = None
    assert make("eata", scen, fisher_alpha=0.0).fishers is None


# ---------------------------------------------------------------------------- losses and rules
def test_eata_loss_and_fisher_by_hand():
    scen = scenario()
    s = make("eata", scen, fisher_samples=64, batch_size=32)
    # Fisher: mean over the two source batches of the squared gradient of CE(own argmax)
    from strategies.eata import FISHER_SEED
    from strategies.tta_base import source_subset
    ref = copy.deepcopy(s.model)
    params = [p for p in ref.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for b in source_subset(scen.source, 64, FISHER_SEED).batches(32):
        out = ref(b.x)
        grads = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), params)
        total = [t + g ** 2 for t, g in zip(total, grads)]
    for (fisher, anchor), t, p in zip(s.fishers, total, params):
        assert torch.allclose(fisher, t / 2, rtol=1e-5, atol=1e-12) and torch.equal(anchor, p)
    # the loss on known logits: only samples under E0 = 0.4 ln 4 count, weighted by exp(E0 - H)
    s.fishers = None
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    loss, kept = s.eata_loss(logits)
    h = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    e0 = 0.4 * math.log(4)
    assert kept == 2 and h[1] > e0 > max(h[0], h[2])
    assert torch.isclose(loss, (h[[0, 2]] * torch.exp(e0 - h[[0, 2]])).mean(), atol=1e-6)
    assert torch.allclose(s.model_probs, logits[[0, 2]].softmax(1).mean(0))
    # second batch: a prediction too similar to the running mean is redundant (|cos| >= d_margin)
    _, kept = s.eata_loss(torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 6.0]]))
    assert kept == 1


def test_rpl_generalized_cross_entropy():
    from strategies.rpl import generalized_cross_entropy
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    got = generalized_cross_entropy(logits, 0.8)
    assert torch.allclose(got, torch.tensor([(1 - 0.75 ** 0.8) / 0.8, (1 - 0.5 ** 0.8) / 0.8]))


def test_soft_likelihood_ratio_and_prior_correction():
    from strategies.roid import prior_corrected, soft_likelihood_ratio
    logits = torch.tensor([[math.log(3.0), 0.0]])          # p = (0.75, 0.25)
    expected = -(0.75 * math.log(3 + 1e-5) + 0.25 * math.log(1 / 3 + 1e-5))
    assert torch.isclose(soft_likelihood_ratio(logits), torch.tensor([expected]))
    logits = torch.tensor([[2.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / 2, 1 / 3) / prior.max()
    assert torch.allclose(prior_corrected(logits), logits * (prior + smooth) / (1 + 3 * smooth))


def test_roid_ensembles_towards_the_source():
    scen = scenario()
    s = make("roid", scen, lr=0.05, use_consistency=False)
    src = [p.detach().clone() for p in s.parameters_to_train()]
    step = {}
    original = s.optimize

    def record(loss):
        original(loss)
        step.update(after=[p.detach().clone() for p in s.parameters_to_train()])
    s.optimize = record
    s.adapt(batches(scen, 1)[0])
    for p, a, p0 in zip(s.parameters_to_train(), step["after"], src):
        assert torch.allclose(p, 0.99 * a + 0.01 * p0, atol=1e-7)


def test_cmf_filter_by_hand():
    scen = scenario()
    s = make("cmf", scen, use_consistency=False)
    n = sum(p.numel() for p in s.parameters_to_train())
    q = 0.005 * n / 38400
    assert math.isclose(s.q, q)
    theta0 = [p.detach().clone() for p in s.parameters_to_train()]
    with torch.no_grad():
        for p in s.parameters_to_train():
            p.add_(1.0)                                       # pretend a step moved theta by +1
    s.filter_weights()
    var = 0.99 ** 2 * 0 + q
    beta = min(max((1 - q) / (var + 1 - q), 0.89), 1.0)
    beta = 1.0 if beta >= 0.9999 else beta
    for p, h, p0 in zip(s.parameters_to_train(), s.hidden, theta0):
        h_exp = beta * p0 + (1 - beta) * (p0 + 1) if beta < 1 else p0
        assert torch.allclose(h, h_exp, atol=1e-6)
        assert torch.allclose(p, 0.99 * (p0 + 1) + 0.01 * h_exp, atol=1e-6)
    assert math.isclose(s.hidden_var, beta * var)


def test_sar_takes_the_gradient_at_the_perturbed_point():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ref = copy.deepcopy(net)
    cfg = STRATEGIES.config_of("sar")(margin_e0=1.0, lr=0.1, reset_constant_em=0.0)
    s = STRATEGIES.get("sar")(net, cfg, num_classes=3)
    s.setup()
    x = torch.rand(16, 3, 8, 8)
    s.adapt(x)
    ref.eval()
    bn = ref[1]
    bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    params = [bn.weight, bn.bias]

    def entropy():
        out = ref(x)
        return -(out.softmax(1) * out.log_softmax(1)).sum(1).mean()
    g = torch.autograd.grad(entropy(), params)
    norm = torch.norm(torch.stack([v.norm() for v in g]))
    with torch.no_grad():
        for p, v in zip(params, g):
            p.add_(0.05 * v / (norm + 1e-12))
    g2 = torch.autograd.grad(entropy(), params)
    with torch.no_grad():
        for p, v in zip(params, g):
            p.sub_(0.05 * v / (norm + 1e-12))
    for p_ours, p, v in zip((net[1].weight, net[1].bias), params, g2):
        assert torch.allclose(p_ours, p - 0.1 * v, atol=1e-6)       # SGD, first step: no momentum yet


def test_deyo_patch_shuffle_is_a_permutation_of_patches():
    from strategies.deyo import shuffle_patches
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float).view(2, 1, 8, 8)
    y = shuffle_patches(x, 4)
    for img_x, img_y in zip(x, y):
        px = sorted(tuple(img_x[:, i:i + 2, j:j + 2].flatten().tolist()) for i in range(0, 8, 2) for j in range(0, 8, 2))
        py = sorted(tuple(img_y[:, i:i + 2, j:j + 2].flatten().tolist()) for i in range(0, 8, 2) for j in range(0, 8, 2))
        assert px == py
    assert not torch.equal(x, y)


def test_lame_affinities_and_fixed_point():
    from strategies.lame import affinity, laplacian_optimization
    f = torch.tensor([[0.0], [1.0], [3.0]])
    knn = affinity(f, "kNN", 1)
    assert torch.equal(knn, torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 1, 0]]))
    sigma = torch.tensor([1.0, 1.0, 2.0]).mean()                   # distance to the 2nd nearest (self counts)
    assert torch.allclose(affinity(f, "rbf", 2)[0, 2], torch.exp(-9 / (2 * sigma ** 2)))
    p = torch.tensor([[0.9, 0.1], [0.45, 0.55]])
    # no affinity: the source probabilities are the solution
    assert torch.allclose(laplacian_optimization(-torch.log(p), torch.zeros(2, 2)), p, atol=1e-6)
    # two strongly linked points agree on the confident one's class (the second flips)
    y = laplacian_optimization(-torch.log(p), torch.tensor([[0.0, 5.0], [5.0, 0.0]]))
    assert y.argmax(1).tolist() == [0, 0]


def test_bn_alpha_and_ema_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        net[1].running_mean.fill_(2.0)
        net[1].running_var.fill_(4.0)
    x = torch.rand(6, 3, 5, 5)
    h = net[0](x).detach()
    mu, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
    m, v = 0.9 * 2.0 + 0.1 * mu, 0.9 * 4.0 + 0.1 * var
    bn = net[1]
    expected = net[5](F.relu(F.batch_norm(h, m, v, bn.weight, bn.bias, False, 0.0, bn.eps)).mean((2, 3)))
    s = STRATEGIES.get("bn")(copy.deepcopy(net), STRATEGIES.config_of("bn")(stats="alpha"), num_classes=3)
    s.setup()
    assert torch.allclose(s.adapt(x), expected, atol=1e-5)
    assert torch.equal(s.model[1].running_mean, torch.full((5,), 2.0))       # source statistics kept
    s = STRATEGIES.get("bn")(copy.deepcopy(net), STRATEGIES.config_of("bn")(stats="ema"), num_classes=3)
    s.setup()
    s.adapt(x)
    assert torch.allclose(s.model[1].running_mean, 0.9 * 2.0 + 0.1 * mu, atol=1e-6)
    assert torch.allclose(s.model[1].running_var, 0.9 * 4.0 + 0.1 * var, atol=1e-5)
    with pytest.raises(ConfigError, match="stats"):
        STRATEGIES.get("bn")(net, STRATEGIES.config_of("bn")(stats="batch"), num_classes=3)


def test_memo_marginal_entropy_and_episodes():
    from strategies.memo import marginal_entropy
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = logits.softmax(1).mean(0)
    assert torch.isclose(marginal_entropy(logits), -(p * p.log()).sum(), atol=1e-6)
    scen = scenario()
    s = make("memo", scen, n_augmentations=4, lr=0.05)
    x = batches(scen, 1, bs=3)[0]
    source = s.predict(x)
    views = s.views(x)
    s.views = lambda _x: views
    whole = s.adapt(x)
    assert not torch.allclose(whole, source, atol=1e-4)          # each image was adapted on
    parts = []
    for i in range(3):                                          # episodic: image by image is the same
        s.views = lambda _x, i=i: views[:, i:i + 1]
        parts.append(s.adapt(x[i:i + 1]))
    assert torch.allclose(whole, torch.cat(parts), atol=1e-5)


def test_ttaug_is_the_mean_over_image_and_views():
    scen = scenario()
    s = make("ttaug", scen, n_augmentations=3)
    x = batches(scen, 1, bs=2)[0]
    views = s.views(x)
    s.views = lambda _x: views
    got = s.adapt(x)
    with torch.no_grad():
        exp = torch.stack([s.model(torch.cat([x[i:i + 1], views[:, i]])).mean(0) for i in range(2)])
    assert torch.allclose(got, exp, atol=1e-6)


def test_rotta_memory_is_category_balanced():
    from strategies.rotta import CategoryBalancedMemory
    mem = CategoryBalancedMemory(capacity=4, num_classes=2, lambda_t=1.0, lambda_u=1.0)
    for k, unc in enumerate([0.5, 0.0, 0.0]):
        mem.add(torch.full((1,), float(k)), 0, uncertainty=unc)
    # class 0 holds at most 2: the third sample (score 0.5) replaced the highest-scoring item, the
    # first one (age 2, entropy 0.5: 1/(1+e^-0.5) + 0.5/ln 2 = 1.34 against 0.56 for the second)
    assert [len(c) for c in mem.items] == [2, 0]
    assert sorted(float(x) for x, _, _ in mem.items[0]) == [1.0, 2.0]
    mem.add(torch.full((1,), 9.0), 0, uncertainty=1.0)           # scores lower than nothing there: rejected
    assert sorted(float(x) for x, _, _ in mem.items[0]) == [1.0, 2.0]
    for k in range(3):
        mem.add(torch.full((1,), 10.0 + k), 1, uncertainty=0.0)
    assert [len(c) for c in mem.items] == [2, 2] and len(mem) == 4
    assert sorted(float(x) for x, _, _ in mem.items[1]) == [11.0, 12.0]
    images, ages = mem.batch()
    assert images.shape == (4, 1) and all(0 < a <= 7 / 4 for a in ages)


def test_gtta_mixes_source_with_similar_test_images():
    scen = scenario()
    s = make("gtta", scen, batch_size=32)
    assert s.source.pos == 0
    s.adapt(batches(scen, 1)[0])
    assert s.source.pos == 1 and s.updates == 2        # one source and one target step per batch


def test_adacontrast_queue_and_bank():
    scen = scenario()
    s = make("adacontrast", scen, queue_size=40)
    x = batches(scen, 1, bs=32)[0]
    s.adapt(x)
    assert s.queue["ptr"] == 32 and len(s.bank["feats"]) == 32 and s.seen == 32
    s.adapt(x)
    # the bank grows by whole batches while it is below the queue size (as the authors' code)
    assert s.queue["ptr"] == 64 % 40 and len(s.bank["feats"]) == 64 and s.bank["ptr"] == 32
