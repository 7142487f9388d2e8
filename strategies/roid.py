"""ROID: universal test-time adaptation by weighted soft-likelihood-ratio training, consistency,
weight ensembling and prior correction.

R. A. Marsden, M. Döbler, B. Yang, "Universal Test-time Adaptation through Weight Ensembling,
Diversity Weighting, and Prior Correction", WACV 2024 (arXiv:2306.00650). Follows the authors'
code (mariodoebler/test-time-adaptation ``classification/methods/roid.py``).

Per test batch x (normalization affine parameters trained, BatchNorm with batch statistics):
  1. weights (``use_weighting``, no gradient): diversity w_div = 1 - cos(p(x), p_bar), p_bar the
     moving average (``momentum_probs``) of the batches' mean predictions, and certainty
     w_cert = -H(x), each min-max normalized over the batch; w = exp(w_div * w_cert / T); samples
     with w_div below the batch mean get weight 0 and are left out;
  2. loss = sum over kept samples of w * SLR(x) / B, with SLR the soft likelihood ratio
     -sum_c p_c log(p_c / (1 - p_c) + 1e-5), p clipped to 0.99, and B = ``batch_size`` (the
     configured batch size, as the authors, also for a smaller last batch);
  3. consistency (``use_consistency``): + sum over kept samples of w * SCE(f(x~), f(x)) / B, x~ one
     augmented view of the kept samples (CoTTA's augmentations without blur and noise, reflect
     padding; ``strategies/_tta_augment.py ROID_VIEW``), SCE symmetric cross-entropy (the gradient
     flows through both sides, as in the code);
  4. one step, then weight ensembling theta <- m theta + (1 - m) theta_source, m = ``momentum_src``;
  5. prior correction (``use_prior_correction``): the returned output (the logits computed
     before the step) is multiplied by the smoothed batch prior (pi + s) / (1 + s K), pi = mean
     softmax prediction, s = max(1/B, 1/K) / max(pi). As in the authors' code, the logits (not
     the probabilities) are multiplied; only the argmax of the result is used for the error.

Defaults: ``cfgs/cifar10_c/roid.yaml`` (Adam, lr 1e-3, batch 200) and ``conf.py`` ROID.* (weighting,
consistency, prior correction on; MOMENTUM_SRC 0.99, MOMENTUM_PROBS 0.9, TEMPERATURE 1/3).
ImageNet-C (``imagenet_c/roid.yaml``): optimizer=sgd lr=0.00025 momentum=0.9 nesterov=true batch_size=64.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_augment import ROID_VIEW, CottaAugment
from strategies.mean_teacher import symmetric_ce
from strategies.tta_base import configure_norm_adaptation, softmax_entropy


@dataclass
class ROIDConfig(StrategyConfig):
    name: str = "roid"
    optimizer: str = "adam"        # cfgs/cifar10_c/roid.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.00025)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64); also B of the loss
    eval_batch_size: int = 200
    use_weighting: bool = True     # conf.py ROID.USE_WEIGHTING
    use_prior_correction: bool = True  # ROID.USE_PRIOR_CORRECTION
    use_consistency: bool = True   # ROID.USE_CONSISTENCY
    momentum_src: float = 0.99     # ROID.MOMENTUM_SRC (weight ensembling)
    momentum_probs: float = 0.9    # ROID.MOMENTUM_PROBS (diversity weighting)
    temperature: float = 1 / 3     # ROID.TEMPERATURE


# ---------------------------------------------------------------------------- shared with CMF
def soft_likelihood_ratio(logits, clip=0.99, eps=1e-5):
    """Per-sample -sum_c p_c log(p_c / (1 - p_c) + eps) with p = softmax clipped to [0, ``clip``]."""
    probs = torch.clamp(logits.softmax(1), min=0.0, max=clip)
    return -(probs * torch.log((probs / (torch.ones_like(probs) - probs)) + eps)).sum(1)


@torch.no_grad()
def diversity_certainty_weights(logits, class_probs, temperature):
    """(weights [B], mask [B] of the samples left out) of step 1 (see the module docstring)."""
    w_div = 1 - F.cosine_similarity(class_probs.unsqueeze(dim=0), logits.softmax(1), dim=1)
    w_div = (w_div - w_div.min()) / (w_div.max() - w_div.min())
    mask = w_div < w_div.mean()
    w_cert = -softmax_entropy(logits)
    w_cert = (w_cert - w_cert.min()) / (w_cert.max() - w_cert.min())
    weights = torch.exp(w_div * w_cert / temperature)
    weights[mask] = 0.
    return weights, mask


def roid_loss(strategy, x, logits):
    """Steps 1-3 for ``strategy`` (ROID or CMF: its cfg, ``class_probs`` and ``augment``); updates
    ``strategy.class_probs``. Returns the loss."""
    c = strategy.cfg
    if c.use_weighting:
        weights, mask = diversity_certainty_weights(logits, strategy.class_probs, c.temperature)
        with torch.no_grad():
            strategy.class_probs = c.momentum_probs * strategy.class_probs + \
                (1 - c.momentum_probs) * logits.softmax(1).mean(0)
    else:
        weights = torch.ones(len(logits), device=logits.device)
        mask = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    loss_out = soft_likelihood_ratio(logits)
    if c.use_weighting:
        loss_out = (loss_out * weights)[~mask]
    loss = loss_out.sum() / c.batch_size
    if c.use_consistency:
        logits_aug = strategy.model(strategy.augment(x[~mask])).float()
        loss += (symmetric_ce(logits_aug, logits[~mask]) * weights[~mask]).sum() / c.batch_size
    return loss


@torch.no_grad()
def prior_corrected(logits):
    """``logits`` times the smoothed prior of the batch (step 5, the authors' expression)."""
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / logits.shape[0], 1 / logits.shape[1]) / torch.max(prior)
    return logits * ((prior + smooth) / (1 + smooth * logits.shape[1]))


# ---------------------------------------------------------------------------- strategy
@STRATEGIES.register("roid")
class ROID(Strategy):
    """Weighted SLR + consistency on normalization parameters, weight ensembling, prior correction."""

    protocols = ("online",)

    Config = ROIDConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        self.class_probs = None
        self.source_params = None
        self.augment = None

    def configure_model(self):
        configure_norm_adaptation(self.model, "roid")
        self.source_params = [p.detach().clone() for p in self.parameters_to_train()]
        self.class_probs = torch.full((self.num_classes,), 1 / self.num_classes, device=self.device)
        shape = self.stream.input_shape or None
        if shape is not None and len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1], params=ROID_VIEW)

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def ensemble_with_source(self):
        """theta <- m theta + (1 - m) theta_source for every trained parameter."""
        m = self.cfg.momentum_src
        if m < 1.0:
            for p, p_src in zip(self.parameters_to_train(), self.source_params):
                p.data = m * p.data + (1 - m) * p_src

    def forward_and_adapt(self, x):
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1], params=ROID_VIEW)
        with torch.enable_grad(), self.autocast():
            logits = self.model(x)
            loss = roid_loss(self, x, logits.float())
        self.optimize(loss)
        self.ensemble_with_source()
        logits = logits.detach().float()
        return prior_corrected(logits) if self.cfg.use_prior_correction else logits

    def extra_state(self):
        return {"class_probs": self.class_probs}

    def load_extra_state(self, state):
        self.class_probs = state["class_probs"].to(self.device)
