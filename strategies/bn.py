"""BN adaptation: BatchNorm statistics from the test stream (BN-1, BN-alpha, BN-EMA).

Three variants, chosen by ``strategy.stats`` (the RMT authors' benchmark, mariodoebler/
test-time-adaptation ``classification/methods/norm.py``: ``BNTest``, ``BNAlpha``, ``BNEMA``):

* ``test`` (BN-1, default): every BatchNorm layer normalizes with the mean and (biased) variance
  of the current test batch; no running statistics are kept. S. Schneider et al., "Improving
  robustness against common corruptions by covariate shift adaptation", NeurIPS 2020
  (arXiv:2006.16971); Z. Nado et al., "Evaluating Prediction-Time Batch Normalization for
  Robustness under Covariate Shift", 2020 (arXiv:2006.10963). The "BN Stats Adapt" / "norm" row
  of the Tent and CoTTA tables. Config: ``cfgs/cifar10_c/norm_test.yaml`` (batch size 200;
  ImageNet-C 64).
* ``alpha`` (BN-alpha, Schneider et al. 2020, Eq. 2): each BatchNorm2d layer normalizes with
  ``(1 - alpha) * source + alpha * batch`` statistics (mean and variance; the batch variance is
  the *unbiased* one, as the authors compute it with a momentum-1 BatchNorm). Works with single
  samples. Config: ``cfgs/cifar10_c/norm_alpha.yaml``: ``BN.ALPHA 0.1``, ``TEST.BATCH_SIZE 1``
  (same for CIFAR-100-C and ImageNet-C): set ``strategy.batch_size=1`` to reproduce it.
* ``ema`` (BN-EMA): each batch first runs in train mode, which moves the running statistics
  towards the batch's with each layer's own momentum (PyTorch default 0.1), and the prediction
  is then made in eval mode with the updated running statistics. Config:
  ``cfgs/cifar10_c/norm_ema.yaml`` (batch size 200; ImageNet-C 64).

No parameter is trained by any variant.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import use_batch_statistics

STATS = ("test", "alpha", "ema")


@dataclass
class BNConfig(StrategyConfig):
    name: str = "bn"
    stats: str = "test"              # test (BN-1) | alpha (BN-alpha) | ema (BN-EMA)
    alpha: float = 0.1               # stats=alpha: cfgs/*/norm_alpha.yaml BN.ALPHA 0.1
    batch_size: int = 200            # cfgs/cifar10_c/norm_test.yaml TEST.BATCH_SIZE 200 (norm_alpha.yaml: 1)
    eval_batch_size: int = 200       # predict() also normalizes with batch statistics (stats=test)


class AlphaBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that normalizes with ``(1 - alpha) * running + alpha * batch`` statistics.

    Built from an existing layer (same parameters, buffers and state_dict keys). The batch mean
    and unbiased variance come from a momentum-1 batch-norm update of two scratch buffers, the
    computation the authors' ``AlphaBatchNorm`` performs; the running statistics never change.
    """

    def __init__(self, bn, alpha):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.to(bn.running_mean.device)
        for new, old in zip(self.parameters(), bn.parameters()):
            new.requires_grad_(old.requires_grad)
        self.alpha = float(alpha)

    def forward(self, x):
        mean = torch.zeros_like(self.running_mean)
        var = torch.ones_like(self.running_var)
        F.batch_norm(x, mean, var, None, None, True, 1.0, self.eps)      # mean, var <- batch statistics
        a = self.alpha
        return F.batch_norm(x, (1 - a) * self.running_mean + a * mean, (1 - a) * self.running_var + a * var,
                            self.weight, self.bias, False, 0.0, self.eps)


def use_alpha_statistics(model, alpha):
    """Replace every BatchNorm2d of ``model`` (in place) by an ``AlphaBatchNorm2d``; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                if child.running_mean is None:
                    raise ConfigError("bn with stats=alpha needs the source running statistics, but a BatchNorm "
                                      "layer has none (track_running_stats=False). Use a model trained with them.")
                setattr(parent, name, AlphaBatchNorm2d(child, alpha))
                count += 1
    return count


@STRATEGIES.register("bn")
class BNAdapt(Strategy):
    """BatchNorm statistics from the test stream: batch (BN-1), source/batch mix (alpha) or running EMA."""

    protocols = ("online",)

    Config = BNConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.stats not in STATS:
            raise ConfigError(f"strategy.stats must be one of {', '.join(STATS)}, got '{cfg.stats}'.")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"strategy.alpha must be in [0, 1], got {cfg.alpha}.")

    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(False)
        if self.cfg.stats == "test":
            use_batch_statistics(self.model)   # eval() then still uses batch statistics
        elif self.cfg.stats == "alpha" and use_alpha_statistics(self.model, self.cfg.alpha) == 0:
            raise ConfigError("bn with stats=alpha found no BatchNorm2d layer in the model.")

    def parameters_to_train(self):
        return []

    @torch.no_grad()
    def forward_and_adapt(self, x):
        """stats=ema: a train-mode pass updates the running statistics, then the eval-mode prediction."""
        if self.cfg.stats == "ema":
            self.model.train()
            self.model(x)
        return self.predict(x)
