"""DualPrompt: complementary G-(general) and E-(expert) prompts.

Paper: Z. Wang, Z. Zhang, S. Ebrahimi, R. Sun, H. Zhang, C.-Y. Lee, X. Ren, G. Su, V. Perot, J. Dy,
T. Pfister, "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022
(arXiv 2204.04799). Authors' code: google-research/l2p; PyTorch port JH-LEE-KR/dualprompt-pytorch.

A frozen pretrained ViT with prefix-tuning: a G-prompt shared by all tasks in blocks
``g_layers`` (0-1) and an E-prompt pool (one prompt per task, with a key) in blocks ``e_layers``
(2-4). Each prompt is a (key prefix, value prefix) pair of ``*_length`` tokens per block.
Training on task t uses E-prompt t (``use_prompt_mask``) and pulls key t towards the queries
(1 - cos, coefficient 1.0); at test time the E-prompt whose key is most similar to the frozen
[CLS] query is used (top-1). The head reads the [CLS] token; logits are masked to the current
task's classes in training. Only G/E prompts, keys and the head train.
"""
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from strategies._prompts import PromptPool, frozen_query, vit_tokens
from cl.registry import STRATEGIES
from strategies.prompt_base import PromptConfig, PromptStrategy


@dataclass
class DualPromptConfig(PromptConfig):
    name: str = "dualprompt"
    optimizer: str = "adam"           # dualprompt-pytorch cifar100: Adam (0.9, 0.999), constant lr
    lr: float = 0.0028125             # 0.03 * batch 24 / 256 (dualprompt-pytorch, lr scaled by batch size)
    batch_size: int = 24              # dualprompt-pytorch cifar100
    grad_clip: float = 1.0            # official configs/cifar100_dualprompt.py: grad_clip_max_norm 1.0
    epochs: int = 5                   # dualprompt-pytorch cifar100
    g_layers: List[int] = field(default_factory=lambda: [0, 1])      # paper: start_g = 1, end_g = 2
    g_length: int = 5                 # paper/code: L_g = 5
    e_layers: List[int] = field(default_factory=lambda: [2, 3, 4])   # paper: start_e = 3, end_e = 5
    e_length: int = 5                 # code cifar100: 5 (ImageNet-R: 20)
    pool_size: int = 10               # one E-prompt per task (10 tasks)
    top_k: int = 1                    # paper: one E-prompt per instance
    pull_coeff: float = 1.0           # code: pull_constraint_coeff 1.0
    batchwise_prompt: bool = True     # code: batchwise_prompt True (test-time selection per batch)
    query_cache: bool = True          # frozen query computed once per training image (docs/prompts.md)


@STRATEGIES.register("dualprompt")
class DualPrompt(PromptStrategy):
    """G-prompt (shared) + task-keyed E-prompts, prefix-tuning in the early blocks."""

    Config = DualPromptConfig
    needs_boundaries = "each experience trains its own E-prompt, chosen at the experience start"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        bad = [i for i in list(c.g_layers) + list(c.e_layers) if not 0 <= i < depth]
        if bad or set(c.g_layers) & set(c.e_layers):
            raise ConfigError(f"dualprompt: g_layers {list(c.g_layers)} and e_layers {list(c.e_layers)} must be "
                              f"disjoint block indices in 0..{depth - 1}.")
        self.prompts = nn.Module()
        self.prompts.g = nn.Parameter(torch.empty(len(c.g_layers), 2, c.g_length, dim).uniform_(-1, 1))
        self.prompts.e = PromptPool(c.pool_size, (len(c.e_layers), 2, c.e_length, dim), dim)

    def forward(self, x, e_idx):
        """Logits for images x in [0, 1] with E-prompt ``e_idx`` [B] per sample."""
        c = self.cfg
        prefixes = {layer: (self.prompts.g[j, 0], self.prompts.g[j, 1]) for j, layer in enumerate(c.g_layers)}
        e = self.prompts.e.prompts[e_idx]                              # [B, n_e, 2, L, D]
        prefixes.update({layer: (e[:, j, 0], e[:, j, 1]) for j, layer in enumerate(c.e_layers)})
        tokens = vit_tokens(self.vit, self.normalize(x), prefixes=prefixes)
        return self.vit.head(tokens[:, 0])                            # head_type='token'

    def loss(self, batch):
        query = self.query(batch)
        task = self.task % self.cfg.pool_size
        idx = torch.full((len(batch.y), 1), task, dtype=torch.long, device=batch.y.device)
        sim = self.prompts.e.similarity(query)
        logits = self.train_logits(self.forward(batch.x, idx[:, 0]), batch.y)
        return F.cross_entropy(logits, batch.y) + self.cfg.pull_coeff * self.prompts.e.pull_loss(sim, idx)

    def predict(self, x):
        self.model.eval()
        with self.autocast():
            query = frozen_query(self.vit, self.normalize(x))
            idx, _ = self.prompts.e.select(query, self.cfg.top_k, self.cfg.batchwise_prompt)
            return self.mask_unseen(self.forward(x, idx[:, 0]).float())
