"""Tent: test-time entropy minimization of the BatchNorm affine parameters.

D. Wang, E. Shelhamer, S. Liu, B. Olshausen, T. Darrell, "Tent: Fully Test-Time Adaptation by
Entropy Minimization", ICLR 2021 (arXiv:2006.10726). For each test batch: predict with BatchNorm
using the batch's statistics, then take one optimizer step on the mean prediction entropy
w.r.t. the BN scale and shift only (all other weights frozen). The returned prediction is the
one made *before* the step, as in the authors' ``forward_and_adapt``.

Defaults are the authors' CIFAR-10-C config (tent repo ``cfgs/tent.yaml``): Adam, lr 1e-3,
beta 0.9, weight decay 0, batch size 200, one step per batch. ImageNet-C (CoTTA repo
``imagenet/cfgs/.../tent0.yaml``): SGD lr 0.00025, momentum 0.9, batch size 64. Episodic
reset is ``scenario.reset_each_shift`` (the "TENT-online" protocol) or ``reset_every``.
"""
from dataclasses import dataclass, field
from typing import List

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import norm_affine_parameters, softmax_entropy, use_batch_statistics


@dataclass
class TentConfig(StrategyConfig):
    name: str = "tent"
    optimizer: str = "adam"          # tent cfgs/tent.yaml: OPTIM.METHOD Adam
    lr: float = 1e-3                 # OPTIM.LR 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # OPTIM.BETA 0.9 (beta2: Adam default)
    weight_decay: float = 0.0        # OPTIM.WD 0
    momentum: float = 0.9            # SGD only (tent conf.py OPTIM.MOMENTUM 0.9; used for ImageNet-C)
    batch_size: int = 200            # TEST.BATCH_SIZE 200
    eval_batch_size: int = 200       # predict() normalizes with batch statistics too
    steps: int = 1                   # OPTIM.STEPS 1: updates per test batch
    layer_and_group_norm: bool = False  # also adapt LayerNorm/GroupNorm affine params (RMT benchmark's Tent, for ViTs)


@STRATEGIES.register("tent")
class Tent(Strategy):
    """Entropy minimization of the BatchNorm affine parameters; BN uses test-batch statistics."""

    protocols = ("online",)

    Config = TentConfig

    def configure_model(self):
        self.model.train()
        self.model.requires_grad_(False)
        use_batch_statistics(self.model)
        params = norm_affine_parameters(self.model, self.cfg.layer_and_group_norm)
        if not params:
            raise ConfigError("tent adapts normalization-layer affine parameters, but the model has no "
                              "BatchNorm layers with affine weights. Use a model with BatchNorm, or set "
                              "strategy.layer_and_group_norm=true for LayerNorm/GroupNorm models (ViTs).")
        for _, p in params:
            p.requires_grad_(True)

    def parameters_to_train(self):
        return [p for _, p in norm_affine_parameters(self.model, self.cfg.layer_and_group_norm)]

    @torch.enable_grad()
    def forward_and_adapt(self, x):
        """Logits of ``x`` before the update; then ``steps`` entropy-minimization steps."""
        self.model.train()
        logits = None
        for _ in range(self.cfg.steps):
            with self.autocast():
                out = self.model(x)
                loss = softmax_entropy(out.float()).mean(0)
            self.optimize(loss)
            logits = out.detach().float()   # the authors return the last step's (pre-update) outputs
        return logits
