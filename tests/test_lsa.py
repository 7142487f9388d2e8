"""Label Shift Adapter (strategies/lsa.py): hand-computed loss, identity start, the Bayes shift it
must learn on Gaussian classes, the batch-wise label distribution estimate, and the gain under label shift."""
import copy
import math

import pytest
import torch
from torch import nn

from cl.data import TensorData
from cl.errors import ConfigError
from strategies.lsa import LSA, LSAConfig, logit_adjusted_loss, sample_priors

MU = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])     # 3 Gaussian classes in 2-D, unit covariance


def bayes_model():
    """Linear model whose logits are log N(x; mu_k, I) + const: the exact posterior under a uniform prior."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(MU)
        lin.bias.copy_(-0.5 * (MU ** 2).sum(1))
    return nn.Sequential(nn.Flatten(), lin)


def gaussian(prior, n, seed):
    """n samples; labels drawn from ``prior``, or exactly balanced when prior is None."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3 if prior is None else torch.multinomial(torch.tensor(prior), n, replacement=True, generator=g)
    return TensorData(MU[y] + torch.randn(n, 2, generator=g), y)


def make(base="source", steps=400, **kw):
    cfg = LSAConfig(base=base, adapter_steps=steps, adapter_hidden=32, source_samples=-1, **kw)
    s = LSA(bayes_model(), cfg, num_classes=3)
    s.setup(source=gaussian(None, 3000, seed=0))
    return s


@pytest.fixture(scope="module")
def trained():
    """One adapter trained on the balanced Gaussian source, shared (copied) by the tests that read it."""
    return make(steps=600)


def test_logit_adjusted_loss_hand_computed():
    # z = 0, pi_src = (.5, .5), pi_tgt = (.8, .2): adjusted logits differ by log 4 -> CE = log(1 + 4)
    z = torch.zeros(1, 2)
    loss = logit_adjusted_loss(z, torch.tensor([0]), torch.tensor([.5, .5]).log(), torch.tensor([.8, .2]).log())
    assert loss.item() == pytest.approx(math.log(5), abs=1e-6)
    loss_half = logit_adjusted_loss(z, torch.tensor([0]), torch.tensor([.5, .5]).log(), torch.tensor([.8, .2]).log(),
                                    tau=0.5)
    assert loss_half.item() == pytest.approx(math.log(1 + 2), abs=1e-6)   # tau halves the log-ratio


def test_sampled_priors_are_distributions_with_the_imbalance_range():
    p = sample_priors(2000, 10, 100.0, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(p.sum(1), torch.ones(2000), atol=1e-5)
    ratio = p.max(1).values / p.min(1).values                       # long-tailed only: the imbalance degree
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 100 + 1e-3 and ratio.max() > 50


def test_untrained_adapter_is_the_source_model_and_estimate_is_an_ema():
    s = make(steps=0, prior_momentum=0.9)
    x = gaussian([1 / 3] * 3, 50, seed=1).x
    src = s.model(x)
    out = s.adapt(x)
    assert torch.allclose(out, src, atol=1e-5)                     # zero last layer: identity adapter
    expected = 0.9 * torch.full((3,), 1 / 3) + 0.1 * src.softmax(1).mean(0)
    assert torch.allclose(s.prior, expected, atol=1e-6)


def test_adapter_learns_the_bayes_prior_shift(trained):
    """The frozen model is the posterior under a uniform prior, so the optimum for pi_t is the logits
    shifted by log pi_t - log pi_src (per-sample constants aside)."""
    s = copy.deepcopy(trained)
    feats = gaussian([1 / 3] * 3, 300, seed=2).x
    base = s.logits_for(feats, torch.full((3,), 1 / 3))
    for pi in ([0.7, 0.2, 0.1], [0.05, 0.15, 0.8]):
        pi = torch.tensor(pi)
        shift = s.logits_for(feats, pi) - base
        shift = shift - shift.mean(1, keepdim=True)
        want = pi.log() - pi.log().mean()
        assert (shift - want).abs().mean() < 0.15, (shift.mean(0), want)
    assert (base - s.model(feats)).abs().max() < 0.2        # pi = pi_src: close to the source model


def test_gain_and_estimate_under_label_shift(trained):
    prior = [0.8, 0.15, 0.05]
    target = gaussian(prior, 1200, seed=3)
    s = copy.deepcopy(trained)
    s.cfg.prior_momentum = 0.7
    src_err = lsa_err = 0
    for b in target.batches(100):
        src_err += (s.model(b.x).argmax(1) != b.y).sum().item()
        lsa_err += (s.adapt(b.x).argmax(1) != b.y).sum().item()
    assert lsa_err < src_err - 15, (lsa_err, src_err)           # Bayes: fewer errors with the right prior
    assert (s.prior - torch.tensor(prior)).abs().max() < 0.08, s.prior
    s.reset()
    assert torch.allclose(s.prior, torch.full((3,), 1 / 3), atol=1e-6)


def test_tent_base_trains_batchnorm_only_and_refusals():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    s = LSA(model, LSAConfig(base="tent", adapter_steps=5, source_samples=-1), num_classes=3)
    s.setup(source=gaussian([1 / 3] * 3, 300, seed=0))
    bn, lin = model[2].weight.clone(), model[1].weight.clone()
    adapter = [p.clone() for p in s.adapter.parameters()]
    s.adapt(gaussian([1 / 3] * 3, 64, seed=4).x)
    assert not torch.equal(model[2].weight, bn) and torch.equal(model[1].weight, lin)
    assert all(torch.equal(a, b) for a, b in zip(adapter, s.adapter.parameters()))   # adapter frozen at test time
    with pytest.raises(ConfigError, match="base"):
        LSA(bayes_model(), LSAConfig(base="eata"), num_classes=3).setup(source=gaussian([1 / 3] * 3, 30, 0))
    with pytest.raises(ConfigError, match="every class"):
        LSA(bayes_model(), LSAConfig(base="source"), num_classes=3).setup(source=gaussian([0.5, 0.5, 0.0], 30, 0))
