"""DualPrompt: complementary G-(general) and E-(expert) prompts.

Paper: Z. Wang, Z. Zhang, S. Ebrahimi, R. Sun, H. Zhang, C.-Y. Lee, X. Ren, G. Su, V. Perot, J. Dy,
T. Pfister, "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022
(arXiv 2204.04799). Authors' code: google-research/l2p; PyTorch port JH-LEE-KR/dualprompt-pytorch.

A frozen pretrained ViT with prefix-tuning: a G-prompt shared by all tasks in blocks
``g_layers`` (0-1) and an E-prompt pool (``top_k`` prompts per task, each with a key) in blocks
``e_layers`` (2-4). Each prompt is a (key prefix, value prefix) pair of ``*_length`` tokens per
block. Training on task t uses E-prompts t*top_k..(t+1)*top_k-1 (``use_prompt_mask``; once t
passes the pool, the ones chosen by key, as the code does) and pulls their keys towards the
queries (1 - cos, coefficient 1.0); at test time the E-prompts whose keys are most similar to the
frozen [CLS] query are used (top-1). The head reads the [CLS] token; logits are masked to the
current task's classes in training. Only G/E prompts, keys and the head train.

``shared_prompt_pool`` (the authors' default in both configs): before task t, E-prompt t-1 is
copied into E-prompt t (and its key with ``shared_prompt_key``, off in both configs), then a
fresh optimizer is built -- dualprompt-pytorch ``engine.py`` (train_and_evaluate), configs
``cifar100_dualprompt.py`` and ``imr_dualprompt.py``; google-research/l2p
``configs/imr_dualprompt.py``.

``batchwise_prompt`` applies at evaluation too, as in the authors' code (prompt.py votes in every
forward pass), over test batches of their training batch size (24): ``eval_batch_size`` defaults
to 24. A larger evaluation batch (all of one task) would leak more task identity through the vote;
``eval_batch_size=1`` selects per image. The ImageNet-R config turns ``batchwise_prompt`` off.

Boundaries (``needs_boundaries``): no faithful task-free DualPrompt exists. The E-prompt trained
on a batch is chosen by the task index (``use_prompt_mask``), and the prompt transfer happens at
the task start; neither the paper nor the two codes define a variant without task boundaries
(google-research/l2p has a task-agnostic configuration for L2P only, ``cifar100_gaussian_l2p.py``:
L2P's pool has no per-task prompts). Counting tasks from labels never seen before, as
``coda_prompt`` does, would be our invention for DualPrompt; a run with hidden boundaries stops
before training instead.
"""
from dataclasses import dataclass, field
from typing import List

import torch
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
    batchwise_prompt: bool = True     # dualprompt-pytorch cifar100_dualprompt.py: True, at evaluation too (imr: False)
    eval_batch_size: int = 24         # dualprompt-pytorch datasets.py: test DataLoader batch_size=args.batch_size (24)
    shared_prompt_pool: bool = True   # cifar100_dualprompt.py / imr_dualprompt.py: E-prompt t-1 copied into t (engine.py)
    shared_prompt_key: bool = False   # idem: its key is not copied
    query_cache: bool = True          # frozen query computed once per training image (docs/prompts.md)


@STRATEGIES.register("dualprompt")
class DualPrompt(PromptStrategy):
    """G-prompt (shared) + task-keyed E-prompts, prefix-tuning in the early blocks."""

    Config = DualPromptConfig
    label_types = ("single", "multi")   # multi-hot targets: masked BCE (PromptStrategy.task_loss)
    needs_boundaries = ("each task trains its own E-prompt, chosen by the task index, and copies the previous "
                        "task's E-prompt at its start (no task-free DualPrompt exists; see strategies/dualprompt.py)")

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

    def before_experience(self, exp):
        self.transfer_prompt()
        super().before_experience(exp)            # fresh optimizer after the copy, as engine.py

    @torch.no_grad()
    def transfer_prompt(self):
        """Before task t > 0: E-prompts of task t-1 copied into task t's slots (``shared_prompt_pool``),
        their keys too (``shared_prompt_key``); nothing once task t's slots pass the pool (engine.py)."""
        t, k, pool = self.task, self.cfg.top_k, self.prompts.e
        if t == 0 or (t + 1) * k > self.cfg.pool_size:
            return
        prev, cur = slice((t - 1) * k, t * k), slice(t * k, (t + 1) * k)
        if self.cfg.shared_prompt_pool:
            pool.prompts[cur] = pool.prompts[prev]
        if self.cfg.shared_prompt_key:
            pool.keys[cur] = pool.keys[prev]

    def forward(self, x, e_idx):
        """Logits for images x in [0, 1] with E-prompts ``e_idx`` [B, top_k] per sample (their
        prefixes concatenated along the prefix length, as the code's ``top_k * length``)."""
        c = self.cfg
        prefixes = {layer: (self.prompts.g[j, 0], self.prompts.g[j, 1]) for j, layer in enumerate(c.g_layers)}
        e = self.prompts.e.prompts[e_idx]                              # [B, top_k, n_e, 2, L, D]
        e = e.permute(0, 2, 3, 1, 4, 5).flatten(3, 4)                 # [B, n_e, 2, top_k * L, D]
        prefixes.update({layer: (e[:, j, 0], e[:, j, 1]) for j, layer in enumerate(c.e_layers)})
        tokens = vit_tokens(self.vit, self.normalize(x), prefixes=prefixes)
        return self.vit.head(tokens[:, 0])                            # head_type='token'

    def train_prompts(self, query):
        """E-prompt ids [B, top_k] of a training batch: the current task's (``use_prompt_mask``), or
        chosen by key once the task's slots pass the pool (the code's prompt_mask=None)."""
        t, k = self.task, self.cfg.top_k
        if (t + 1) * k <= self.cfg.pool_size:
            return torch.arange(t * k, (t + 1) * k, device=query.device).expand(len(query), -1)
        return self.prompts.e.select(query, k, self.cfg.batchwise_prompt)[0]

    def loss(self, batch):
        query = self.query(batch)
        idx = self.train_prompts(query)
        sim = self.prompts.e.similarity(query)
        return self.task_loss(self.forward(batch.x, idx), batch.y) + self.cfg.pull_coeff * self.prompts.e.pull_loss(sim, idx)

    def predict(self, x):
        self.model.eval()
        with self.autocast():
            query = frozen_query(self.vit, self.normalize(x))
            idx, _ = self.prompts.e.select(query, self.cfg.top_k, self.cfg.batchwise_prompt)
            return self.mask_unseen(self.forward(x, idx).float())
