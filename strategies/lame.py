"""LAME: Laplacian-adjusted maximum-likelihood estimation of the batch's labels (no training).

M. Boudiaf, R. Mueller, I. Ben Ayed, L. Bertinetto, "Parameter-free Online Test-time Adaptation",
CVPR 2022 (arXiv:2201.05718). Follows the RMT authors' benchmark (mariodoebler/test-time-adaptation
``classification/methods/lame.py``, built on fiveai/LAME).

The model is frozen and runs in eval mode (BatchNorm with its source running statistics). Per
test batch: features f (the input of the classifier head) and source probabilities p; the unary
term -log(p + 1e-10); an affinity W between the L2-normalized features (``affinity``):
  * ``rbf``: exp(-||f_i - f_j||^2 / (2 sigma^2)), sigma = mean over i of the distance to the
    ``knn``-th nearest point (counting i itself);
  * ``kNN``: 1 for the ``knn`` nearest other points, else 0;
  * ``linear``: f_i . f_j;
optionally symmetrized (``force_symmetry``). The assignment Y is then found by the bound
optimization of the paper (Eq. 7): Y <- softmax(log p + W Y), from Y = p, at most 100 steps,
stopping when the energy changes by at most 1e-8 of its value. The output is Y (probabilities;
the argmax is the prediction).

Defaults: ``cfgs/cifar10_c/lame.yaml`` (batch 200; ImageNet-C 64) and ``conf.py`` LAME.AFFINITY
rbf, LAME.KNN 5, LAME.SIGMA 1.0 (used by no affinity of the code: rbf computes its own sigma),
LAME.FORCE_SYMMETRY false.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models.features import features_and_logits
from cl.registry import STRATEGIES
from cl.strategy import Strategy

AFFINITIES = ("rbf", "kNN", "linear")


@dataclass
class LAMEConfig(StrategyConfig):
    name: str = "lame"
    batch_size: int = 200          # cfgs/cifar10_c/lame.yaml TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    affinity: str = "rbf"          # conf.py LAME.AFFINITY: rbf | kNN | linear
    knn: int = 5                   # LAME.KNN
    force_symmetry: bool = False   # LAME.FORCE_SYMMETRY
    max_steps: int = 100           # methods/lame.py laplacian_optimization


def affinity(features, kind, knn):
    """[N, N] affinity of the (normalized) ``features`` [N, D]; see the module docstring."""
    if kind == "linear":
        return features @ features.t()
    n = features.size(0)
    dist = torch.norm(features.unsqueeze(0) - features.unsqueeze(1), dim=-1, p=2)
    if kind == "kNN":
        index = dist.topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]
        return torch.zeros(n, n, device=features.device).scatter_(-1, index, 1.0)
    sigma = dist.topk(k=min(knn, n), dim=-1, largest=False).values[:, -1].mean()
    return torch.exp(-dist ** 2 / (2 * sigma ** 2))


def entropy_energy(Y, unary, pairwise):
    """The energy of the bound optimization (LAME Eq. 6 with the bound's pairwise term)."""
    return (unary * Y - pairwise * Y + Y * torch.log(Y.clip(1e-20))).sum()


def laplacian_optimization(unary, kernel, max_steps=100):
    """Y minimizing the Laplacian-regularized energy, by Y <- softmax(-unary + kernel @ Y)."""
    old = float("inf")
    Y = (-unary).softmax(-1)
    for i in range(max_steps):
        pairwise = kernel.matmul(Y)
        Y = (-unary + pairwise).softmax(-1)
        energy = entropy_energy(Y, unary, pairwise).item()
        if i > 1 and abs(energy - old) <= 1e-8 * abs(old):
            break
        old = energy
    return Y


@STRATEGIES.register("lame")
class LAME(Strategy):
    """Frozen model; the batch's predictions are adjusted by a Laplacian term over feature affinities."""

    protocols = ("online",)

    Config = LAMEConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.affinity not in AFFINITIES:
            raise ConfigError(f"strategy.affinity must be one of {', '.join(AFFINITIES)}, got '{cfg.affinity}'.")
        if cfg.knn < 1 or cfg.max_steps < 1:
            raise ConfigError("strategy.knn and strategy.max_steps must be >= 1.")

    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(False)

    def parameters_to_train(self):
        return []

    @torch.no_grad()
    def forward_and_adapt(self, x):
        self.model.eval()
        with self.autocast():
            feats, logits = features_and_logits(self.model, x)
        feats, logits = feats.float(), logits.float()
        unary = -torch.log(logits.softmax(dim=1) + 1e-10)
        kernel = affinity(F.normalize(feats, p=2, dim=-1), self.cfg.affinity, self.cfg.knn)
        if self.cfg.force_symmetry:
            kernel = 1 / 2 * (kernel + kernel.t())
        return laplacian_optimization(unary, kernel, self.cfg.max_steps)

    def predict(self, x):
        """Evaluation uses the same batch-level adjustment as adaptation (it changes no state)."""
        return self.forward_and_adapt(x)
