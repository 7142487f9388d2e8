"""LAE: Learning-Accumulation-Ensemble with a general parameter-efficient tuning (PET) module.

Paper: Q. Gao, C. Zhao, Y. Sun, T. Xi, G. Zhang, B. Ghanem, J. Zhang, "A Unified Continual Learning
Framework with General Parameter-Efficient Tuning", ICCV 2023 (arXiv 2303.10070). Authors' code:
gqk/LAE (main.py, libml/model/pet/lora.py, config/vit_adapter.yaml, config/vit_lora.yaml,
config/vit_prefix.yaml, config/base/cifar100_order1.yaml).

- Learning: an online PET module in blocks ``layers`` of a frozen ViT is trained on the current
  task, cross-entropy over the current task's classes only. ``pet``: parallel adapters, prefixes,
  or LoRA (rank-``lora_rank`` updates of the key and value projections; the code's ``KVLoRA``
  attached to each block's ``attn.qkv``). Adaptation-speed calibration: from the second task on,
  the PET module is frozen for the first ``freeze_epochs`` epochs (only the head learns); every
  PET output (adapter output, key/value prefix, LoRA key/value update) has a learnable scale
  starting at 1; prefix attention is renormalised (``compensate``, the code's compensatory prefix).
- Accumulation: from the second task on, an offline PET module (a copy of the online one at the
  start of task 2) follows the online one by EMA after every step: off = d * off + (1 - d) * on.
- Ensemble: prediction = element-wise max of the softmax outputs of the online and the offline
  expert (the code's ``torch.stack(...).max``); ``predict`` returns its log.
The head is shared by both experts. Only the PET modules and the head train.

Boundaries (``needs_boundaries``): no faithful task-free LAE exists. Its calibration is defined
per task -- from the second task on, the PET module is frozen for the first ``freeze_epochs``
epochs *of each task* and a fresh optimizer starts each task (main.py, ``num_freeze_epochs``) --
and the offline expert is created at the start of the second task. The paper and gqk/LAE define
no variant without task boundaries; counting tasks from labels never seen before, as
``coda_prompt`` does, would be our invention for LAE, so a run with hidden boundaries stops before
training instead.
"""
import copy
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from strategies._pet import Adapter, LoRA, Prefix
from strategies._prompts import vit_tokens
from cl.registry import STRATEGIES
from strategies.prompt_base import PromptConfig, PromptStrategy

PETS = ("adapter", "prefix", "lora")


@dataclass
class LAEConfig(PromptConfig):
    name: str = "lae"
    optimizer: str = "adam"           # config/base/cifar100_order1.yaml: Adam, constant lr
    lr: float = 0.0028125             # cifar100_order1.yaml (0.03 * 24 / 256)
    batch_size: int = 24              # cifar100_order1.yaml
    epochs: int = 5                   # cifar100_order1.yaml
    pet: str = "adapter"              # adapter | prefix | lora (config/vit_adapter.yaml, vit_prefix.yaml, vit_lora.yaml)
    layers: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # adapt_blocks (all three vit_*.yaml)
    adapter_hidden: int = 5           # vit_adapter.yaml: down_sample 5 (bottleneck width)
    prefix_length: int = 10           # vit_prefix.yaml: length 10
    compensate: bool = True           # vit_prefix.yaml: compensatory true
    lora_rank: int = 5                # vit_lora.yaml: rank 5 (scale null: learnable, starts at 1)
    ema_decay: float = 0.9999         # cifar100_order1.yaml: ema_decay
    freeze_epochs: int = 3            # cifar100_order1.yaml: num_freeze_epochs
    ensemble: bool = True             # eval_only_emas false: max over online and offline softmax


@STRATEGIES.register("lae")
class LAE(PromptStrategy):
    """Online PET learns, offline PET accumulates by EMA, predictions ensemble the two."""

    Config = LAEConfig
    needs_boundaries = ("the PET module is frozen for the first epochs of each new task and the offline expert "
                        "starts with the second task (no task-free LAE exists; see strategies/lae.py)")
    module_key = "online"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        dim, depth = self.vit.embed_dim, len(self.vit.blocks)
        if c.pet not in PETS or any(not 0 <= i < depth for i in c.layers) or c.lora_rank < 1:
            raise ConfigError(f"lae: pet must be one of {', '.join(PETS)} (got '{c.pet}'), layers in 0..{depth - 1} "
                              f"(got {list(c.layers)}) and lora_rank >= 1 (got {c.lora_rank}).")
        make = {"adapter": lambda: Adapter(dim, c.adapter_hidden), "prefix": lambda: Prefix(dim, c.prefix_length),
                "lora": lambda: LoRA(dim, c.lora_rank)}[c.pet]
        self.online = nn.ModuleList([make() for _ in c.layers])
        self.offline = None

    def before_experience(self, exp):
        if self.task > 0 and self.offline is None:
            self.offline = copy.deepcopy(self.online).requires_grad_(False)
        super().before_experience(exp)

    def forward(self, x, pets):
        c = self.cfg
        if c.pet == "prefix":
            tokens = vit_tokens(self.vit, x, prefixes={i: p() for i, p in zip(c.layers, pets)}, compensate=c.compensate)
        else:
            tokens = vit_tokens(self.vit, x, **{c.pet + "s": dict(zip(c.layers, pets))})   # adapters= / loras=
        return self.vit.head(tokens[:, 0])

    def loss(self, batch):
        frozen = self.task > 0 and self.epoch() < self.cfg.freeze_epochs
        self.online.requires_grad_(not frozen)          # adaptation-speed calibration
        self.step += 1
        logits = self.train_logits(self.forward(self.normalize(batch.x), self.online), batch.y)
        return F.cross_entropy(logits, batch.y)

    @torch.no_grad()
    def after_step(self, batch):
        if self.offline is None:
            return
        d = self.cfg.ema_decay
        for off, on in zip(self.offline.state_dict().values(), self.online.state_dict().values()):
            off.mul_(d).add_(on.detach(), alpha=1 - d)

    def after_experience(self, exp):
        super().after_experience(exp)
        self.online.requires_grad_(True)

    @torch.no_grad()
    def predict(self, x):
        self.model.eval()
        with self.autocast():
            x = self.normalize(x)
            prob = self.mask_unseen(self.forward(x, self.online).float()).softmax(1)
            if self.cfg.ensemble and self.offline is not None:
                prob = torch.maximum(prob, self.mask_unseen(self.forward(x, self.offline).float()).softmax(1))
            return prob.clamp_min(1e-30).log()

    def extra_state(self):
        return {**super().extra_state(), "offline": self.offline.state_dict() if self.offline is not None else None}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        if "online" not in state:
            return
        self.offline = None
        if state["offline"] is not None:
            self.offline = copy.deepcopy(self.online).requires_grad_(False)
            self.offline.load_state_dict(state["offline"])
