"""Continual fine-tuning of CLIP (the "Continual-FT" baseline of ZSCL's MTIL benchmark) and the base
of the CLIP strategies (zscl, clip_lwf, wise_ft).

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language
Models", ICCV 2023, arXiv 2303.06628; code Thunderbeee/ZSCL, ``mtil/src/models/finetune.py`` (the
loop), ``mtil/src/args.py`` (defaults) and ``mtil/scripts/finetune.sh`` / ``ZSCL.sh`` (per-task
settings). Per task (experience), as finetune.py does in one process per task:

- a fresh AdamW and a cosine learning-rate schedule with ``warmup_steps`` linear warm-up over the
  task's steps (``utils.cosine_lr``);
- logits = exp(logit_scale) * cos(image embedding, text embedding of "<first template>(class)") over
  the task's classes only, both encoders trained, ``logit_scale`` frozen (``--train-mode=whole``);
- cross-entropy with label smoothing 0.2 (``--ls 0.2``);
- optional: an L2 pull towards the weights at the start of the task (``--l2``, ``helpers.l2_loss``:
  sum of squared differences) and the weight ensemble (``--we --avg_freq``, strategies/_weight_ensemble.py),
  which replaces the weights at the end of the task.

Evaluation uses the model's zero-shot head (all templates of every class), as ZSCL's ``evaluate``.
Needs a CLIP model (``model.name=clip``) and the experience boundaries.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models.clip import clip_of
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._weight_ensemble import WeightEnsemble

TRAIN_MODES = ("whole", "image", "text")


@dataclass
class CLIPFinetuneConfig(StrategyConfig):
    name: str = "clip_finetune"
    optimizer: str = "adamw"          # finetune.py: torch.optim.AdamW
    lr: float = 1e-5                  # scripts/*.sh: 1e-5 for most datasets
    lr_by_task: Dict[str, float] = field(default_factory=lambda: {"aircraft": 5e-5, "mnist": 5e-5})  # ZSCL.sh lr array
    weight_decay: float = 0.0         # args.py --wd 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # args.py beta1 0.9 (AdamW call), --beta2 0.999
    batch_size: int = 64              # args.py --batch-size 64
    eval_batch_size: int = 128        # args.py --batch-size-eval 128
    label_smoothing: float = 0.2      # scripts: --ls 0.2
    warmup_steps: int = 100           # args.py --warmup_length 100
    train_mode: str = "whole"         # scripts: --train-mode=whole (both encoders; logit_scale frozen)
    template_index: int = 0           # finetune.py: texts = dataset.template (= templates[0]) of each class
    weight_ensemble_every: int = 0    # --we --avg_freq N (0: off; ZSCL: 100)
    l2: float = 0.0                   # --l2 weight of the pull to the task-start weights (0: off; ZSCL: 1)


def cosine_lr(step, base_lr, warmup, last_step):
    """ZSCL ``utils.cosine_lr`` at ``step`` (0-based): linear warm-up base*(step+1)/warmup, then a
    half cosine from base to 0 at ``last_step`` (<= 0: constant after the warm-up)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if last_step <= warmup:
        return base_lr
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (last_step - warmup))) * base_lr


@STRATEGIES.register("clip_finetune")
class CLIPFinetune(Strategy):
    """Continual fine-tuning of CLIP on each task's class prompts (ZSCL's finetune.py), per-task AdamW + cosine."""

    Config = CLIPFinetuneConfig
    needs_boundaries = ("each task restarts the optimizer and learning-rate schedule and trains on that task's "
                        "class prompts (ZSCL finetune.py runs once per task)")

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        self.clip = clip_of(model, type(self).__name__)
        if cfg.train_mode not in TRAIN_MODES:
            raise ConfigError(f"strategy.train_mode must be one of {', '.join(TRAIN_MODES)}, got '{cfg.train_mode}'.")
        if not 0 <= cfg.label_smoothing < 1 or cfg.warmup_steps < 1:
            raise ConfigError("strategy.label_smoothing must be in [0, 1) and strategy.warmup_steps >= 1.")
        self.step, self.last_step, self.base_lr = 0, 0, cfg.lr
        self.classes, self.local, self.anchor, self.ensemble = None, None, None, None

    # ------------------------------------------------------------------ set-up
    def configure_model(self):
        mode = self.cfg.train_mode
        for n, p in self.clip.clip.named_parameters():
            visual = n.startswith("visual.")
            p.requires_grad_(not n.startswith("logit_") and (mode == "whole" or visual == (mode == "image")))

    def before_experience(self, exp):
        """Per task: fresh optimizer and schedule, the task's classes, L2 anchor, weight ensemble."""
        params = self.parameters_to_train()
        self.optimizer = self.make_optimizer(params)
        key = exp.domain or exp.task_key or ""
        self.base_lr = float(self.cfg.lr_by_task.get(key, self.cfg.lr))
        n_steps = self.stream.steps_per_experience[exp.index] if exp.index < len(self.stream.batches_per_experience) else 0
        self.step, self.last_step = 0, n_steps - 1
        self._set_lr()
        device = self.clip.prompt_tokens.device
        self.classes = torch.as_tensor(exp.classes, dtype=torch.long, device=device)
        self.local = torch.full((self.clip.num_classes,), -1, dtype=torch.long, device=device)
        self.local[self.classes] = torch.arange(len(self.classes), device=device)
        self.anchor = [p.detach().clone() for p in params] if self.cfg.l2 > 0 else None
        self.ensemble = WeightEnsemble(params) if self.cfg.weight_ensemble_every > 0 else None

    def _set_lr(self):
        lr = cosine_lr(self.step, self.base_lr, self.cfg.warmup_steps, self.last_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ------------------------------------------------------------------ training
    def task_logits(self, x):
        """exp(logit_scale) * cos(image, first-template prompt) over the current task's classes."""
        img = self.clip.encode_image(x)
        txt = self.clip.class_embeddings(self.classes, template_index=self.cfg.template_index)
        return self.clip.scale * img @ txt.t()

    def loss(self, batch):
        y = self.local[batch.y]
        if bool((y < 0).any()):
            raise ConfigError("A training label is not among the experience's classes; clip strategies train "
                              "each task on its own classes (use a task-incremental scenario such as mtil).")
        loss = F.cross_entropy(self.task_logits(batch.x), y, label_smoothing=self.cfg.label_smoothing)
        if self.anchor is not None:
            pull = sum(((p - a) ** 2).sum() for p, a in zip(self.parameters_to_train(), self.anchor))
            loss = loss + self.cfg.l2 * pull
        return loss

    def after_step(self, batch):
        if self.ensemble is not None and self.step % self.cfg.weight_ensemble_every == 0:
            self.ensemble.update()        # finetune.py: after the step, when iteration % avg_freq == 0
        self.step += 1
        self._set_lr()

    def after_experience(self, exp):
        if self.ensemble is not None:
            self.ensemble.copy_to_parameters()   # ZSCL evaluates and saves the ensemble (we_model)
