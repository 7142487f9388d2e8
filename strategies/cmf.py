"""CMF: continual momentum filtering -- ROID's loss with Kalman-style weight filtering.

J. Lee, H. Jung, S. Shin, H. Chang, "Continual Momentum Filtering on Parameter Space for Online
Test-time Adaptation", ICLR 2024 (OpenReview BllUWdpIOA). Follows the RMT authors' benchmark
(mariodoebler/test-time-adaptation ``classification/methods/cmf.py``, from the code on OpenReview).

Per test batch: ROID's loss and step (``strategies/roid.py``: weighted soft likelihood ratio and
consistency on the normalization affine parameters, BatchNorm with batch statistics), then instead
of ROID's weight ensembling a filter on a hidden copy h of the trained parameters:
  1. predict: h <- alpha h + (1 - alpha) theta_source;
  2. update: v <- alpha^2 v + q; beta = (1 - q) / (v + 1 - q), clipped below at 0.89 and set to 1
     above 0.9999; v <- beta v; h <- beta h + (1 - beta) theta (no change when beta = 1);
  3. ensemble: theta <- gamma theta + (1 - gamma) h.
with q = ``q`` * (number of trained parameter elements / 38400), as the authors scale it. The
returned output is ROID's prior-corrected one (the logits before the step times the batch prior).
The authors' ``TYPE op`` variant ensembles with the predicted h of step 1, which in their code is
the same object as the updated h, so it computes the same as ``lp``; only ``lp`` is offered.
A reset (episodic, ``reset_each_shift``) restores theta, h, the optimizer and p_bar but keeps v,
as the authors' ``reset`` does.

Defaults: ``cfgs/cifar10_c/cmf.yaml`` (Adam, lr 1e-3, batch 200), ``conf.py`` CMF.ALPHA 0.99,
CMF.GAMMA 0.99, CMF.Q 0.005 and the ROID.* options (weighting, consistency, prior correction on,
MOMENTUM_PROBS 0.9, TEMPERATURE 1/3). ImageNet-C (``imagenet_c/cmf.yaml``): optimizer=sgd
lr=0.00025 momentum=0.9 nesterov=true batch_size=64.
"""
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_augment import ROID_VIEW, CottaAugment
from strategies.roid import prior_corrected, roid_loss
from strategies.tta_base import configure_norm_adaptation

PARAMETER_SCALE = 38400     # methods/cmf.py: q is scaled by (trainable parameters / 38400)


@dataclass
class CMFConfig(StrategyConfig):
    name: str = "cmf"
    optimizer: str = "adam"        # cfgs/cifar10_c/cmf.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.00025)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64); also B of the loss
    eval_batch_size: int = 200
    alpha: float = 0.99            # conf.py CMF.ALPHA
    gamma: float = 0.99            # CMF.GAMMA
    q: float = 0.005               # CMF.Q (scaled by trainable parameters / 38400)
    use_weighting: bool = True     # ROID.USE_WEIGHTING
    use_prior_correction: bool = True  # ROID.USE_PRIOR_CORRECTION
    use_consistency: bool = True   # ROID.USE_CONSISTENCY
    momentum_probs: float = 0.9    # ROID.MOMENTUM_PROBS
    temperature: float = 1 / 3     # ROID.TEMPERATURE


@STRATEGIES.register("cmf")
class CMF(Strategy):
    """ROID's loss, then a Kalman-style filter of the weights towards the source."""

    protocols = ("online",)

    Config = CMFConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        for key in ("alpha", "gamma"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ConfigError(f"strategy.{key} must be in [0, 1], got {getattr(cfg, key)}.")
        self.class_probs = None
        self.source_params = None
        self.hidden = None           # h
        self.hidden_var = 0.0        # v
        self.q = None
        self.augment = None

    def configure_model(self):
        configure_norm_adaptation(self.model, "cmf")
        params = self.parameters_to_train()
        self.source_params = [p.detach().clone() for p in params]
        self.hidden = [p.detach().clone() for p in params]
        self.q = self.cfg.q * sum(p.numel() for p in params) / PARAMETER_SCALE
        self.class_probs = torch.full((self.num_classes,), 1 / self.num_classes, device=self.device)
        shape = self.stream.input_shape or None
        if shape is not None and len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1], params=ROID_VIEW)

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    @staticmethod
    def _ema(targets, sources, momentum):
        """target <- momentum * target + (1 - momentum) * source, skipped when momentum >= 1."""
        if momentum < 1.0:
            for t, s in zip(targets, sources):
                t.data = momentum * t.data + (1 - momentum) * s.data

    @torch.no_grad()
    def filter_weights(self):
        """Steps 1-3 of the module docstring."""
        c = self.cfg
        self._ema(self.hidden, self.source_params, c.alpha)
        self.hidden_var = c.alpha ** 2 * self.hidden_var + self.q
        r = 1 - self.q
        beta = r / (self.hidden_var + r)
        beta = beta if beta > 0.89 else 0.89
        beta = beta if beta < 0.9999 else 1.0
        self.hidden_var = beta * self.hidden_var
        self._ema(self.hidden, self.parameters_to_train(), beta)
        self._ema(self.parameters_to_train(), self.hidden, c.gamma)

    def forward_and_adapt(self, x):
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1], params=ROID_VIEW)
        with torch.enable_grad(), self.autocast():
            logits = self.model(x)
            loss = roid_loss(self, x, logits.float())
        self.optimize(loss)
        self.filter_weights()
        logits = logits.detach().float()
        return prior_corrected(logits) if self.cfg.use_prior_correction else logits

    def reset(self):
        var = self.hidden_var             # the authors' reset leaves v as it is
        super().reset()
        self.hidden_var = var

    def extra_state(self):
        return {"class_probs": self.class_probs, "hidden": [h.clone() for h in self.hidden],
                "hidden_var": self.hidden_var}

    def load_extra_state(self, state):
        self.class_probs = state["class_probs"].to(self.device)
        self.hidden = [h.clone().to(self.device) for h in state["hidden"]]
        self.hidden_var = float(state["hidden_var"])
