"""CoTTA: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022, arXiv 2203.13591.

A mean teacher (strategies/mean_teacher.py) with three additions, following the paper (Eq. 1-8,
Alg. 1) and the authors' code (qinenergy/cotta, cifar/cotta.py):
  * augmentation-averaged pseudo-labels: the frozen source model ("anchor", batch-stat BN)
    gives the batch's mean max-softmax confidence; when it is < ``ap`` the target is the mean of
    the teacher's LOGITS over ``n_augmentations`` augmented views (strategies/_tta_augment.py), otherwise
    the teacher's clean logits (one decision per batch, as in the code);
  * soft cross-entropy of the student against the teacher's probabilities;
  * stochastic restore: after the step and the EMA, every element of every trained weight/bias
    is reset to its source value with probability ``rst`` (M ~ Bernoulli(rst), W ← M⊙W0 + (1−M)⊙W).
The returned prediction is the target (the teacher's), computed before the update, as in the code.

Defaults are the CIFAR10-C values (cfgs/cifar10/cotta.yaml). Other settings of the authors
(override in the run config; experiments/reproduce/cotta_*.yaml do so):
  CIFAR100-C (cfgs/cifar100/cotta.yaml): ap=0.72.
  ImageNet-C (imagenet/cotta.py, cfgs/10orders/cotta/*.yaml): optimizer=sgd lr=0.01 momentum=0.9
  nesterov=true batch_size=64 rst=0.001 ap=0.1 consistency=sce (the ImageNet loss is symmetric).
The views go through the teacher in one batched pass on an accelerator and one pass per view on
the CPU (faster there), with per-view BN statistics either way (``views_per_forward``).
``augment_always=true`` reproduces the CIFAR code, which computes the views on every batch even
when it then uses the clean prediction (this only changes random-number consumption); the
ImageNet code and the RMT authors' benchmark compute them only when needed (default here).

Speed (issue 16 item 6). By default bit for bit equal to the authors' code (``benchmarks/tta_reference.py
--check`` gives 0 against it, in float32 and with ``--float64``): the augmentation samples one affine grid
for the whole batch, blurs channels-last and shifts the hue with a gather (strategies/_tta_augment.py,
tested bit-identical to torchvision), and the teacher's clean forward pass is skipped when the views give
the target and the prediction is the target (the authors' code does not run it either). Faster still on
the CPU: ``model.channels_last=true`` runs the student, teacher, anchor and views in oneDNN's NHWC
convolutions, the same arithmetic summed in another order: with ``--float64`` it agrees with the authors'
code to ~1e-14 (``--method cotta_cl``); in float32 the rounding differs, and Adam turns the sign of
near-zero gradients into full lr-sized steps, so after a few batches logits differ by ~1e-4 and single
weights by up to ~2e-3 (argmax unchanged in the check). Batched views (``views_per_forward`` > 1) are
slower on the CPU. BENCHMARKS.md has the figures.
"""
from dataclasses import dataclass

import torch

from cl.errors import ConfigError
from cl.registry import STRATEGIES
from strategies._tta_augment import CottaAugment
from strategies.mean_teacher import MeanTeacher, MeanTeacherConfig, frozen_copy, full_precision, weight_and_bias
from strategies.tta_base import batch_norm_groups


@dataclass
class CoTTAConfig(MeanTeacherConfig):
    name: str = "cotta"
    ema_momentum: float = 0.999    # cfgs/cifar10/cotta.yaml MT 0.999 (paper §4.1)
    rst: float = 0.01              # cfgs/cifar10/cotta.yaml RST 0.01 (paper §4.1: p = 0.01)
    ap: float = 0.92               # cfgs/cifar10/cotta.yaml AP 0.92 (CIFAR100: 0.72, ImageNet: 0.1)
    n_augmentations: int = 32      # paper §4.1: "32 augmentations"
    augment_always: bool = False   # True: compute the views every batch, as cifar/cotta.py does
    # Views per teacher forward pass: 0 = auto (all views in one batched pass on an accelerator,
    # one pass per view on the CPU, where a 32x larger batch measured 2-3x slower: BENCHMARKS.md).
    # BN statistics stay per view either way (strategies/tta_base.py: batch_norm_groups).
    views_per_forward: int = 0


@STRATEGIES.register("cotta")
class CoTTA(MeanTeacher):
    """Mean teacher + anchor-gated augmentation averaging + stochastic restore."""

    Config = CoTTAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if not 0.0 <= cfg.rst <= 1.0:
            raise ConfigError(f"strategy.rst must be a probability in [0, 1], got {cfg.rst}.")
        if cfg.views_per_forward < 0:
            raise ConfigError(f"strategy.views_per_forward must be >= 0 (0: auto), got {cfg.views_per_forward}.")
        if cfg.n_augmentations < 0:
            raise ConfigError(f"strategy.n_augmentations must be >= 0, got {cfg.n_augmentations}.")
        self.anchor = None
        self.source_weights = None
        self.augment = None
        self.last_used_augmented = None   # whether the latest target was the augmented mean

    def configure_model(self):
        super().configure_model()
        self.anchor = frozen_copy(self.model)
        self.source_weights = [p.detach().clone() for _, p in weight_and_bias(self.model)]
        shape = self.stream.input_shape
        if self.cfg.n_augmentations > 0 and len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1])

    def teacher_target(self, x, teacher_logits):
        """``teacher_logits``: the teacher's clean logits, or a function computing them (called only
        when they are needed: not when the views give the target and the prediction is the target)."""
        anchor_conf = self.anchor(x).softmax(1).max(1)[0].mean(0)
        use_aug = bool(anchor_conf < self.cfg.ap) and self.cfg.n_augmentations > 0
        views = None
        if use_aug or (self.cfg.augment_always and self.cfg.n_augmentations > 0):
            views = self.augmented_logits(x)
        self.last_used_augmented = use_aug
        if use_aug:
            return views
        return teacher_logits() if callable(teacher_logits) else teacher_logits

    def forward_and_adapt(self, x):
        """MeanTeacher's step, except that the teacher's clean forward pass is skipped when the
        target is the mean over the views and the prediction is the target (as the authors' code
        does: it runs the teacher either on the views or on x). No random numbers are drawn by the
        skipped pass, so the results are the same bit for bit."""
        with torch.enable_grad(), self.autocast():
            student_logits = self.model(x)
            with torch.no_grad():
                clean = {}

                def teacher_logits():
                    if "z" not in clean:
                        clean["z"] = self.teacher(x)
                    return clean["z"]
                target = self.teacher_target(x, teacher_logits)
                if self.cfg.prediction == "ensemble":
                    teacher_logits()
            loss = self.consistency(student_logits, target).mean(0)
        self.optimize(loss)
        self.after_update()
        return full_precision(self.output(student_logits.detach(), clean.get("z"), target))

    def augmented_logits(self, x):
        """Mean teacher logits over ``n_augmentations`` views. BN batch statistics are per view, as
        in the authors' code (one forward per view); ``views_per_forward`` views share one batched
        forward pass with per-view statistics (``batch_norm_groups``), which computes the same."""
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1])
        n, b = self.cfg.n_augmentations, len(x)
        k = self.cfg.views_per_forward or (n if x.device.type != "cpu" else 1)
        views = []
        for start in range(0, n, k):
            g = min(k, n - start)
            xs = torch.cat([self.augment(x) for _ in range(g)]) if g > 1 else self.augment(x)
            with batch_norm_groups(self.teacher, g):
                views.append(full_precision(self.teacher(xs)).view(g, b, -1))
        return torch.cat(views).mean(0)

    def after_update(self):
        super().after_update()
        self.stochastic_restore()

    @torch.no_grad()
    def stochastic_restore(self):
        """Each element of each weight/bias returns to its source value with probability ``rst``."""
        if self.cfg.rst <= 0:
            return
        for (_, p), src in zip(weight_and_bias(self.model), self.source_weights):
            mask = (torch.rand(p.shape, device=p.device) < self.cfg.rst).to(p.dtype)
            p.copy_(src * mask + p * (1.0 - mask))

    def predict(self, x):
        """Evaluation without adaptation: the teacher's clean prediction."""
        return super().predict(x)
