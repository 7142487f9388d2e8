"""RMT's contrastive loss and source prototypes against reference formulas on small hand-made tensors.

References: Döbler et al., RMT (CVPR 2023, arXiv 2211.13081), Eq. 4-5; the authors' code
(mariodoebler/test-time-adaptation, classification/methods/rmt.py: ``contrastive_loss`` is the
SupCon loss of Khosla et al. 2020 with ``labels=None``, contrast mode "all"; the prototypes are the
mean source feature per class). The formulas below are written per anchor, with Python loops, to
be independent of the vectorised code under test.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cl.data import Experience, Scenario, TensorData
from cl.models.features import features_and_logits
from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from strategies._tta_augment import CottaAugment

load_builtins()


def supcon_reference(views, temperature):
    """SupCon with labels=None over views [V, B, D] (already projected): every view is an anchor;
    its positives are the other views of the same sample; the denominator runs over all other views.
    loss = mean over anchors i of  -1/|P(i)| * sum_{p in P(i)} log( e^{s_ip} / sum_{a != i} e^{s_ia} ),
    s = cosine similarity / temperature."""
    v, b, _ = views.shape
    z = [F.normalize(views[k, j], dim=0) for k in range(v) for j in range(b)]   # anchor n = k*B + j
    losses = []
    for i in range(v * b):
        sims = {a: float(z[i] @ z[a]) / temperature for a in range(v * b) if a != i}
        log_denominator = math.log(sum(math.exp(s) for s in sims.values()))
        positives = [a for a in sims if a % b == i % b]
        losses.append(-sum(sims[p] - log_denominator for p in positives) / len(positives))
    return sum(losses) / len(losses)


def make(model, scenario, **overrides):
    cfg = OmegaConf.structured(STRATEGIES.config_of("rmt")(**overrides))
    s = STRATEGIES.get("rmt")(model, cfg, stream=StreamInfo.of(scenario, cfg.batch_size))
    s.setup(source=scenario.source)
    return s


def feature_scenario(x, y, num_classes):
    """An online scenario whose labelled source data is the float feature tensor ``x``."""
    return Scenario("features", [Experience(0, None, TensorData(x, y), list(range(num_classes)))], num_classes,
                    tuple(x.shape[1:]), protocol="online", source=TensorData(x, y))


def mlp(weight, bias, classes):
    torch.manual_seed(0)
    body = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        body.weight.copy_(weight)
        body.bias.copy_(bias)
    return nn.Sequential(body, nn.ReLU(), nn.Linear(weight.shape[0], classes))


def test_supcon_closed_form_two_samples_two_views():
    """Sample 0's views are both e1, sample 1's both e2 (projector = identity): for every anchor the
    positive has similarity 1 and the two negatives 0, so the loss is log(1 + 2 e^{-1/t})."""
    x = torch.zeros(2, 2)                         # source data: unused with classifier prototypes
    s = make(mlp(torch.eye(2), torch.zeros(2), 2), feature_scenario(x, torch.tensor([0, 1]), 2),
             warmup_samples=0, lambda_ce_src=0.0, prototypes="classifier", temperature=0.5)
    s.projector = nn.Identity()
    e1, e2 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.2])        # lengths do not matter (cosine)
    views = torch.stack([torch.stack([e1, e2]), torch.stack([2 * e1, e2])])   # [V=2, B=2, D=2]
    expected = math.log(1 + 2 * math.exp(-1 / 0.5))
    with torch.no_grad():
        assert float(s.contrastive(views)) == pytest.approx(expected, rel=1e-6)
    assert supcon_reference(views, 0.5) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("v,b,d,t", [(3, 4, 5, 0.1), (2, 3, 4, 1.0), (3, 1, 3, 0.1)])
def test_supcon_matches_reference_formula_through_the_projector(v, b, d, t):
    g = torch.Generator().manual_seed(v * 100 + b)
    x = torch.zeros(2, d)
    s = make(mlp(torch.eye(d), torch.zeros(d), 2), feature_scenario(x, torch.tensor([0, 1]), 2),
             warmup_samples=0, lambda_ce_src=0.0, prototypes="classifier", temperature=t, projection_dim=6)
    views = torch.randn(v, b, d, generator=g)
    with torch.no_grad():
        projected = s.projector(views.reshape(v * b, d)).reshape(v, b, -1)
        ours = float(s.contrastive(views))
    assert ours == pytest.approx(supcon_reference(projected, t), rel=1e-5, abs=1e-6)
    # the loss depends on which views belong to which sample: rolling the first views over the
    # samples (sample j's first view becomes sample j-1's) changes it
    if b > 1:
        shuffled = views.clone()
        shuffled[0] = views[0].roll(1, 0)
        with torch.no_grad():
            assert float(s.contrastive(shuffled)) != pytest.approx(ours, rel=1e-3)


def test_source_prototypes_are_class_means_of_head_input_features():
    """Prototype k = mean over source samples of class k of the features entering the head, here
    relu(W x + b) with a hand-set W, b; the source order and batching do not change them."""
    w = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, -2.0, 1.0], [1.0, 1.0, 1.0]])
    bias = torch.tensor([0.0, 0.1, 0.5, -1.0])
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, -1.0, 1.0],
                      [-1.0, 0.0, 1.0], [3.0, 3.0, -2.0], [0.5, 0.5, 0.5], [1.0, -1.0, 2.0]])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    s = make(mlp(w, bias, 3), feature_scenario(x, y, 3), warmup_samples=0, lambda_ce_src=0.0, batch_size=2)
    expected = []
    for k in range(3):
        rows = [torch.relu(w @ x[i] + bias) for i in range(len(y)) if y[i] == k]
        expected.append(sum(rows) / len(rows))
    assert torch.allclose(s.prototypes, torch.stack(expected), atol=1e-6)
    assert s.prototypes.shape == (3, 4)


def test_classifier_prototypes_are_head_weight_rows():
    x = torch.zeros(2, 3)
    net = mlp(torch.eye(3), torch.zeros(3), 2)
    s = make(net, feature_scenario(x, torch.tensor([0, 1]), 2), warmup_samples=0, lambda_ce_src=0.0,
             prototypes="classifier")
    assert torch.equal(s.prototypes, net[-1].weight.detach())


def test_adaptation_step_contrasts_nearest_prototype_feature_and_augmented_feature():
    """The contrastive term of one step equals SupCon over [prototype nearest (cosine) to each test
    feature, the test feature, the feature of the augmented view], all through the projector."""
    cfg = OmegaConf.structured(SCENARIOS.config_of("synthetic_shift")(n_per_class=8))
    scen = SCENARIOS.get("synthetic_shift")(cfg, seed=0)
    torch.manual_seed(0)
    model = MODELS.get("small_cnn")(num_classes=scen.num_classes, input_shape=scen.input_shape, width=8)
    s = make(model, scen, warmup_samples=0, lambda_ce_src=0.0, batch_size=16)
    x = next(scen.experiences[1].test.batches(16)).x
    student, projector, prototypes = copy.deepcopy(s.model), copy.deepcopy(s.projector), s.prototypes.clone()
    torch.manual_seed(3)
    s.adapt(x)
    with torch.no_grad():
        feats, _ = features_and_logits(student, x)
        torch.manual_seed(3)
        feats_aug, _ = features_and_logits(student, CottaAugment(x.shape[-1])(x))
        cos = torch.stack([F.cosine_similarity(feats, p[None], dim=1) for p in prototypes], 1)   # [B, K]
        views = torch.stack([prototypes[cos.argmax(1)], feats, feats_aug])
        projected = projector(views.reshape(-1, views.shape[-1])).reshape(3, len(x), -1)
    assert float(s.last_losses["contrastive"]) == pytest.approx(supcon_reference(projected, 0.1), rel=1e-4)
