"""RPL: robust pseudo-labelling with the generalized cross-entropy.

E. Rusak, S. Schneider, G. Pachitariu, L. Eck, P. Gehler, O. Bringmann, W. Brendel, M. Bethge,
"If your data distribution shifts, use self-learning", TMLR 2022 (arXiv:2104.12928). Follows
the RMT authors' benchmark (mariodoebler/test-time-adaptation ``classification/methods/rpl.py``,
built on oripress/CCC ``models/rpl.py``).

Per test batch, with the normalization layers' affine parameters trained and BatchNorm using the
batch's statistics: hard pseudo-label y = argmax f(x), loss = mean over the batch of the
generalized cross-entropy (Zhang & Sabuncu 2018) GCE = (1 - p_y^q) / q, one step. The prediction
is the one made before the step.

Defaults: ``cfgs/cifar10_c/rpl.yaml`` (Adam, lr 1e-3, batch 200) and ``conf.py`` RPL.Q 0.8.
ImageNet-C (``imagenet_c/rpl.yaml``): optimizer=sgd lr=0.0005 momentum=0.9 nesterov=true batch_size=64.
"""
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import configure_norm_adaptation


@dataclass
class RPLConfig(StrategyConfig):
    name: str = "rpl"
    optimizer: str = "adam"        # cfgs/cifar10_c/rpl.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.0005)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    q: float = 0.8                 # conf.py RPL.Q


def generalized_cross_entropy(logits, q, targets=None):
    """Per-sample (1 - p_y^q) / q with p = softmax(logits) and y = ``targets`` (default: argmax)."""
    probs = logits.softmax(1)
    if targets is None:
        targets = probs.argmax(1)
    return (1.0 - probs.gather(1, targets[:, None]).squeeze(1) ** q) / q


@STRATEGIES.register("rpl")
class RPL(Strategy):
    """Generalized cross-entropy on hard pseudo-labels; normalization affine parameters trained."""

    protocols = ("online",)

    Config = RPLConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if not 0.0 < cfg.q <= 1.0:
            raise ConfigError(f"strategy.q must be in (0, 1], got {cfg.q}.")

    def configure_model(self):
        configure_norm_adaptation(self.model, "rpl")

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward_and_adapt(self, x):
        with torch.enable_grad(), self.autocast():
            logits = self.model(x)
            loss = generalized_cross_entropy(logits.float(), self.cfg.q, logits.argmax(1)).mean(0)
        self.optimize(loss)
        return logits.detach().float()
