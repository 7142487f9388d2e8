"""Mean teacher for test-time adaptation: the EMA-teacher core of CoTTA and RMT.

References
  Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017, arXiv 1703.01780.
  Wang et al., "Continual Test-Time Domain Adaptation" (CoTTA), CVPR 2022, arXiv 2203.13591, Eq. 1-2.
  Döbler et al., "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (RMT),
  CVPR 2023, arXiv 2211.13081.

Per test batch x (online protocol):
  1. student logits z_s = f_θ(x) (with grad), teacher logits z_t = f_θ'(x) (no grad);
  2. target = teacher_target(x, z_t)   (CoTTA: augmentation-averaged when unsure);
  3. loss = consistency(z_s, target): "ce" = -Σ softmax(target)·log_softmax(z_s) (CoTTA CIFAR),
     "sce" = 0.5·CE(target→z_s) + 0.5·CE(z_s→target) (RMT; CoTTA ImageNet);
  4. one optimizer step on the student, then the teacher EMA  θ' ← m·θ' + (1−m)·θ
     (parameters only, as both reference codes do; buffers are not averaged — BatchNorm running
     statistics are removed, see below);
  5. returns the prediction from the PRE-update forward: teacher (default), student, or
     student + teacher logits (RMT's ensemble).

Model set-up, as in the authors' code: every ``weight``/``bias`` parameter is trained (CoTTA's
``collect_params``), and every BatchNorm normalises with the current batch's statistics (running
statistics set to None) in the student, the teacher and the anchor. The model is kept in eval
mode otherwise (no dropout), as in the RMT authors' benchmark.

State: the teacher is checkpointed in ``extra_state`` and restored by ``reset()`` (episodic
reset, ``reset_every``); everything else a subclass adds is listed in its own ``extra_state``.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import use_batch_statistics

CONSISTENCY = ("ce", "sce")
PREDICTIONS = ("teacher", "student", "ensemble")


@dataclass
class MeanTeacherConfig(StrategyConfig):
    name: str = "mean_teacher"
    optimizer: str = "adam"        # CoTTA cifar10/cotta.yaml, RMT cifar10_c/rmt.yaml: Adam
    lr: float = 1e-3               # same configs: LR 1e-3, BETA 0.9
    batch_size: int = 200          # same configs: TEST.BATCH_SIZE 200
    ema_momentum: float = 0.999    # CoTTA OPTIM.MT / RMT M_TEACHER.MOMENTUM
    consistency: str = "ce"        # ce (CoTTA CIFAR) | sce (RMT, CoTTA ImageNet)
    prediction: str = "teacher"    # teacher (CoTTA) | student | ensemble (RMT: student + teacher logits)
    nesterov: bool = False         # sgd only; the ImageNet configs of CoTTA and RMT use nesterov=True


# ---------------------------------------------------------------------------- shared helpers
def weight_and_bias(model):
    """[(name, param)] of every module's own ``weight``/``bias``: CoTTA's ``collect_params``."""
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]


@torch.no_grad()
def ema_update(teacher, student, momentum):
    """θ' ← m·θ' + (1−m)·θ for every parameter (same floating-point expression as the authors)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.copy_(momentum * t + (1 - momentum) * s)


def soft_ce(logits, target_logits):
    """Per-sample −Σ softmax(target)·log_softmax(logits) (CoTTA's ``softmax_entropy``)."""
    return -(target_logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_ce(logits, target_logits, alpha=0.5):
    """Per-sample (1−α)·CE(target→logits) + α·CE(logits→target) (RMT's ``SymmetricCrossEntropy``)."""
    return (-(1 - alpha) * (target_logits.softmax(1) * logits.log_softmax(1)).sum(1)
            - alpha * (logits.softmax(1) * target_logits.log_softmax(1)).sum(1))


def full_precision(z):
    """Logits of an autocast pass in float32; float32/float64 ones as they are (a float64 model, as in
    ``benchmarks/tta_reference.py --float64``, keeps float64 predictions)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def frozen_copy(model):
    """A deep copy with no gradients (teacher, anchor)."""
    twin = copy.deepcopy(model)
    twin.requires_grad_(False)
    return twin


# ---------------------------------------------------------------------------- strategy
@STRATEGIES.register("mean_teacher")
class MeanTeacher(Strategy):
    """EMA teacher + consistency loss (student vs teacher) on each unlabelled test batch."""

    protocols = ("online",)

    Config = MeanTeacherConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.consistency not in CONSISTENCY:
            raise ConfigError(f"strategy.consistency must be one of {', '.join(CONSISTENCY)}, got '{cfg.consistency}'.")
        if cfg.prediction not in PREDICTIONS:
            raise ConfigError(f"strategy.prediction must be one of {', '.join(PREDICTIONS)}, got '{cfg.prediction}'.")
        if not 0.0 <= cfg.ema_momentum <= 1.0:
            raise ConfigError(f"strategy.ema_momentum must be in [0, 1], got {cfg.ema_momentum}.")
        self.teacher = None

    # ------------------------------------------------------------------ set-up
    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(True)
        use_batch_statistics(self.model)
        self.teacher = frozen_copy(self.model)

    def parameters_to_train(self):
        return [p for _, p in weight_and_bias(self.model)]

    def make_optimizer(self, params):
        c = self.cfg
        if c.optimizer == "sgd" and c.nesterov:
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True)
        return super().make_optimizer(params)

    # ------------------------------------------------------------------ online hooks
    def consistency(self, logits, target_logits):
        """Per-sample consistency loss of the student against the (detached) target."""
        target_logits = target_logits.detach()
        if self.cfg.consistency == "ce":
            return soft_ce(logits, target_logits)
        return symmetric_ce(logits, target_logits)

    def teacher_target(self, x, teacher_logits):
        """The pseudo-label logits the student is pulled towards (plain mean teacher: the teacher's)."""
        return teacher_logits

    def after_update(self):
        """After the optimizer step: the teacher EMA (CoTTA adds the stochastic restore)."""
        ema_update(self.teacher, self.model, self.cfg.ema_momentum)

    def output(self, student_logits, teacher_logits, target_logits):
        if self.cfg.prediction == "student":
            return student_logits
        if self.cfg.prediction == "ensemble":
            return student_logits + teacher_logits
        return target_logits

    def forward_and_adapt(self, x):
        with torch.enable_grad(), self.autocast():
            student_logits = self.model(x)
            with torch.no_grad():
                teacher_logits = self.teacher(x)
                target = self.teacher_target(x, teacher_logits)
            loss = self.consistency(student_logits, target).mean(0)
        self.optimize(loss)
        self.after_update()
        return full_precision(self.output(student_logits.detach(), teacher_logits, target))

    @torch.no_grad()
    def predict(self, x):
        """Evaluation without adaptation, with the same prediction rule as ``forward_and_adapt``."""
        with self.autocast():
            teacher_logits = self.teacher(x)
            student_logits = self.model(x) if self.cfg.prediction != "teacher" else None
            return full_precision(self.output(student_logits, teacher_logits, teacher_logits))

    # ------------------------------------------------------------------ state
    def extra_state(self):
        return {"teacher": self.teacher.state_dict()}

    def load_extra_state(self, state):
        self.teacher.load_state_dict(state["teacher"])
