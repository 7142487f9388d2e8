"""WiSE-FT as a continual baseline: after fine-tuning on a task, interpolate the weights with the
weights at the start of that task.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022 (arXiv 2109.01903), as run on
MTIL by ZSCL (Zheng et al., ICCV 2023, Table 1 "WiSE-FT"; code Thunderbeee/ZSCL
``mtil/scripts/WiSE_finetune.sh``: ``--method finetune --wise_merge --wise_ft_model n
--wise_ft_alpha 0.8``). ``finetune.py`` then sets every weight to ``alpha * fine-tuned + (1 - alpha) *
start-of-task`` (``--wise_ft_model n``: the model loaded at the start of the task), which is what the
next task starts from and what is evaluated. Everything else is ``clip_finetune``.
"""
from dataclasses import dataclass

import torch

from cl.errors import ConfigError
from cl.registry import STRATEGIES
from strategies.clip_finetune import CLIPFinetune, CLIPFinetuneConfig


@dataclass
class WiSEFTConfig(CLIPFinetuneConfig):
    name: str = "wise_ft"
    alpha: float = 0.8              # WiSE_finetune.sh --wise_ft_alpha 0.8 (weight of the fine-tuned model)


@STRATEGIES.register("wise_ft")
class WiSEFT(CLIPFinetune):
    """clip_finetune, then weights = alpha * fine-tuned + (1 - alpha) * start-of-task after each task."""

    Config = WiSEFTConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if not 0 <= cfg.alpha <= 1:
            raise ConfigError(f"strategy.alpha must be in [0, 1], got {cfg.alpha}.")
        self.start = None

    def before_experience(self, exp):
        super().before_experience(exp)
        self.start = [p.detach().clone() for p in self.parameters_to_train()]

    @torch.no_grad()
    def after_experience(self, exp):
        super().after_experience(exp)
        a = self.cfg.alpha
        for p, s in zip(self.parameters_to_train(), self.start):
            p.mul_(a).add_(s, alpha=1 - a)
