"""TTAug: test-time augmentation -- the mean of the logits over the image and its AugMix views.

The "TTAug" baseline of the RMT authors' benchmark (mariodoebler/test-time-adaptation
``classification/methods/ttaug.py``), as used in MEMO (Zhang et al., NeurIPS 2022,
arXiv:2110.09506, Table 1). Nothing is trained. Each image and ``n_augmentations`` AugMix views of
it (``strategies/_tta_views.py``) go through the model as one batch, BatchNorm normalizing with
(1 - ``bn_alpha``) source + ``bn_alpha`` batch statistics of that batch (BN-alpha,
``strategies/bn.py``); the prediction is the mean of the logits. A batch of B images is B such
single-image batches (the authors' code averages over its whole input, i.e. it assumes batch size 1).

Defaults: there is no ``cfgs/*/ttaug.yaml``; ``conf.py`` TEST.N_AUGMENTATIONS 32, BN.ALPHA 0.1,
and batch size 1 (see above).
"""
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_views import augmix_views
from strategies.bn import use_alpha_statistics


@dataclass
class TTAugConfig(StrategyConfig):
    name: str = "ttaug"
    batch_size: int = 1            # the method works image by image (any batch size gives the same result)
    eval_batch_size: int = 1
    n_augmentations: int = 32      # conf.py TEST.N_AUGMENTATIONS 32
    bn_alpha: float = 0.1          # conf.py BN.ALPHA
    severity: int = 1              # AugMix operation severity (transforms_augmix.py default)


@STRATEGIES.register("ttaug")
class TTAug(Strategy):
    """Mean logits over each image and its AugMix views; BN-alpha statistics; no training."""

    protocols = ("online",)

    Config = TTAugConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.n_augmentations < 0:
            raise ConfigError(f"strategy.n_augmentations must be >= 0, got {cfg.n_augmentations}.")
        if not 0.0 <= cfg.bn_alpha <= 1.0:
            raise ConfigError(f"strategy.bn_alpha must be in [0, 1], got {cfg.bn_alpha}.")

    def configure_model(self):
        self.model.requires_grad_(False)
        use_alpha_statistics(self.model, self.cfg.bn_alpha)

    def parameters_to_train(self):
        return []

    def views(self, x):
        """[n_augmentations, B, C, H, W] AugMix views of the batch."""
        return augmix_views(x, self.cfg.n_augmentations, self.cfg.severity)

    @torch.no_grad()
    def forward_and_adapt(self, x):
        views = self.views(x) if self.cfg.n_augmentations else x.new_zeros((0, *x.shape))
        out = []
        for i in range(len(x)):
            with self.autocast():
                out.append(self.model(torch.cat([x[i:i + 1], views[:, i]])).float().mean(0, keepdim=True))
        return torch.cat(out)

    def predict(self, x):
        return self.forward_and_adapt(x)
