"""MEMO: test-time robustness via adaptation and augmentation -- marginal entropy over AugMix views.

M. Zhang, S. Levine, C. Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation",
NeurIPS 2022 (arXiv:2110.09506). Follows the RMT authors' benchmark
(mariodoebler/test-time-adaptation ``classification/methods/memo.py``, built on zhangmarvin/memo).

Each test image is handled on its own: the model is reset to the source (``episodic``), the
entropy of the marginal prediction over ``n_augmentations`` AugMix views (``strategies/_tta_views.py``),
H(mean_v softmax f(x_v)), is minimized by ``steps`` SGD steps on every weight and bias, and the
adapted model then predicts the image itself. BatchNorm layers normalize with (1 - ``bn_alpha``)
source + ``bn_alpha`` batch statistics (BN-alpha, ``strategies/bn.py``): the batch is the views
for the update and the single image for the prediction. A batch of B images is B such
single-image episodes, one after the other (the authors' configs use batch size 1); with
``episodic=false`` the model carries over from image to image.

Defaults: ``cfgs/cifar10_c/memo.yaml`` (SGD, lr 0.005, MODEL.EPISODIC true, TEST.BATCH_SIZE 1,
N_AUGMENTATIONS 32, OPTIM.STEPS 1) and ``conf.py`` (OPTIM.MOMENTUM 0.9, NESTEROV true, WD 0,
BN.ALPHA 0.1). ImageNet-C (``imagenet_c/memo.yaml``): lr=0.00025 n_augmentations=64.
"""
import math
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_views import augmix_views
from strategies.bn import use_alpha_statistics
from strategies.mean_teacher import weight_and_bias


@dataclass
class MEMOConfig(StrategyConfig):
    name: str = "memo"
    optimizer: str = "sgd"         # cfgs/cifar10_c/memo.yaml OPTIM.METHOD SGD
    lr: float = 0.005              # OPTIM.LR 0.005 (ImageNet-C 0.00025)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM 0.9
    nesterov: bool = True          # conf.py OPTIM.NESTEROV True
    batch_size: int = 1            # TEST.BATCH_SIZE 1 (larger batches: one episode per image)
    eval_batch_size: int = 1
    episodic: bool = True          # MODEL.EPISODIC True: reset to the source before every image
    n_augmentations: int = 32      # TEST.N_AUGMENTATIONS 32 (ImageNet-C 64)
    steps: int = 1                 # OPTIM.STEPS 1
    bn_alpha: float = 0.1          # conf.py BN.ALPHA (BN-alpha statistics)
    severity: int = 1              # AugMix operation severity (transforms_augmix.py default)


def marginal_entropy(logits):
    """Entropy of the mean softmax over the rows of ``logits`` [V, K] (computed in log space)."""
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = log_probs.logsumexp(dim=0) - math.log(log_probs.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


@STRATEGIES.register("memo")
class MEMO(Strategy):
    """Per image: minimize the marginal entropy of AugMix views, then predict (episodic)."""

    protocols = ("online",)

    Config = MEMOConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.n_augmentations < 1 or cfg.steps < 1:
            raise ConfigError("strategy.n_augmentations and strategy.steps must be >= 1.")
        if not 0.0 <= cfg.bn_alpha <= 1.0:
            raise ConfigError(f"strategy.bn_alpha must be in [0, 1], got {cfg.bn_alpha}.")

    def configure_model(self):
        self.model.requires_grad_(True)
        use_alpha_statistics(self.model, self.cfg.bn_alpha)

    def parameters_to_train(self):
        return [p for _, p in weight_and_bias(self.model)]

    def views(self, x):
        """[n_augmentations, B, C, H, W] AugMix views of the batch."""
        return augmix_views(x, self.cfg.n_augmentations, self.cfg.severity)

    def forward_and_adapt(self, x):
        views = self.views(x)
        out = []
        for i in range(len(x)):
            if self.cfg.episodic:
                self.reset()
            for _ in range(self.cfg.steps):
                with torch.enable_grad(), self.autocast():
                    loss = marginal_entropy(self.model(views[:, i]).float())
                self.optimize(loss)
            with torch.no_grad(), self.autocast():
                out.append(self.model(x[i:i + 1]).float())
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, x):
        """The model as it stands (the source model when episodic), BN-alpha statistics per image."""
        with self.autocast():
            return torch.cat([self.model(x[i:i + 1]).float() for i in range(len(x))])
