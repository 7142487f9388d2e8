"""CODA-Prompt: COntinual Decomposed Attention-based prompting.

Paper: J. S. Smith, L. Karlinsky, V. Gutta, P. Cascante-Bonilla, D. Kim, A. Arbelle, R. Panda,
R. Feris, Z. Kira, "CODA-Prompt: COntinual Decomposed Attention-based Prompting for
Rehearsal-Free Continual Learning", CVPR 2023 (arXiv 2211.13218). Authors' code: GT-RIPL/CODA-Prompt.

In every block of ``layers`` a pool of ``pool_size`` prompt components P_m (``length`` tokens),
keys K_m and attention vectors A_m. The prompt of an image is sum_m alpha_m P_m with
alpha_m = cos(q * A_m, K_m), q the frozen [CLS] query; its first/second half are the key/value
prefixes. Each task owns pool_size / n_tasks new components; earlier ones are frozen (detached),
and the new ones are drawn orthogonal to all earlier ones (Gram-Schmidt). Adam with the authors'
per-epoch cosine schedule, a fresh optimizer per task; logits masked to the current task's
classes in training; optional orthogonality penalty ``ortho_mu`` (the authors' configs: 0).
Prediction uses every component initialised so far (the code's ``K[0:f]``).

Cosine schedule (utils/schedulers.py ``CosineSchedule``, stepped once per epoch from the second
on, learners/default.py): epoch e of E has lr * cos(99 * pi * e / (200 * (E - 1))), so the last
epoch runs at lr * cos(0.495 pi) = 0.0157 lr, not zero.

Hidden boundaries (task-free streams). The authors initialise a task's components when the task
arrives, "as we don't know how many tasks we will encounter" (models/zoo.py), so the task start
is the only boundary the method needs. With ``hide_boundaries=true`` it is inferred from the
labels: a training batch made only of labels never trained on starts a new task (its components
are initialised orthogonal to the earlier ones, the step count and the cosine schedule restart, a
fresh optimizer is built, and the previous task's components are frozen); labels new to the
stream arriving in a batch that also holds known ones join the current task. The current task's
classes for ``train_mask`` are the labels seen since it started. On a class-incremental stream
with disjoint tasks this reproduces the visible-boundary run (tested); on blurry streams, where
classes of later tasks leak into earlier ones, the inferred tasks are not the stream's. With
visible boundaries the authors' behaviour is unchanged (``before_experience`` starts the task).
"""
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.multilabel import labels_in
from strategies._prompts import frozen_query, orthogonal_rows, vit_tokens
from cl.distributed import shard_call
from cl.registry import STRATEGIES
from strategies.prompt_base import PromptConfig, PromptStrategy


@dataclass
class CodaPromptConfig(PromptConfig):
    name: str = "coda_prompt"
    optimizer: str = "adam"           # configs/cifar-100_prompt.yaml: Adam
    lr: float = 0.001                 # configs/cifar-100_prompt.yaml
    batch_size: int = 128             # configs/cifar-100_prompt.yaml
    epochs: int = 20                  # configs/cifar-100_prompt.yaml (ImageNet-R: 50)
    pool_size: int = 100              # prompt_param [100, 8, 0.0]: 100 components
    length: int = 8                   # prompt_param: length 8 (4 key + 4 value prefix tokens)
    ortho_mu: float = 0.0             # prompt_param: orthogonality penalty weight 0.0
    layers: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # code: e_layers 0-4
    n_tasks: int = 0                  # tasks sharing the pool (0: the scenario's number of experiences)
    cosine: bool = True               # code: CosineSchedule over the epochs of each task
    query_cache: bool = True          # frozen query computed once per training image (docs/prompts.md)


@STRATEGIES.register("coda_prompt")
class CodaPrompt(PromptStrategy):
    """Attention-weighted sums of prompt components, prefix-tuning in blocks 0-4."""
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py

    Config = CodaPromptConfig
    label_types = ("single", "multi")   # multi-hot targets: masked BCE (PromptStrategy.task_loss)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        n_tasks = c.n_tasks or self.stream.num_experiences
        if n_tasks < 1 or c.pool_size < n_tasks or c.length % 2 or any(not 0 <= i < depth for i in c.layers):
            raise ConfigError(f"coda_prompt: need n_tasks >= 1 (got {n_tasks}; set strategy.n_tasks), pool_size >= "
                              f"n_tasks (got {c.pool_size}), an even length (got {c.length}) and layers in 0..{depth - 1}.")
        if c.pool_size > dim:
            raise ConfigError(f"coda_prompt: pool_size={c.pool_size} components cannot have mutually orthogonal keys "
                              f"in the ViT's {dim} dimensions; set strategy.pool_size <= {dim} (or use a wider ViT).")
        self.per_task = c.pool_size // n_tasks
        self.begun = -1                   # index of the last task whose components were initialised
        nl = len(c.layers)
        self.prompts = nn.ParameterDict({
            "K": nn.Parameter(torch.zeros(nl, c.pool_size, dim)),
            "A": nn.Parameter(torch.zeros(nl, c.pool_size, dim)),
            "P": nn.Parameter(torch.zeros(nl, c.pool_size, c.length, dim))})

    def start_components(self):
        """Initialise task ``self.task``'s components, orthogonal to all earlier ones (the code's
        ``process_task_count`` / ``gram_schmidt``)."""
        s, e = self.task * self.per_task, (self.task + 1) * self.per_task
        if e > self.cfg.pool_size:
            raise ConfigError(f"coda_prompt: task {self.task + 1} has no free components left in the pool of "
                              f"{self.cfg.pool_size}; set strategy.n_tasks to the number of tasks in the stream.")
        for p in self.prompts.values():
            for layer in range(p.shape[0]):
                orthogonal_rows(p[layer], s, e)
        self.begun = self.task

    def before_experience(self, exp):
        self.start_components()
        super().before_experience(exp)

    def infer_task_start(self, y):
        """Hidden boundaries: start a new task when the batch's labels are all new (module docstring)."""
        labels = set(labels_in(y))
        if self.begun < 0 or labels.isdisjoint(self.seen):
            if self.begun >= 0:
                self.task += 1                    # the previous task ends, as after_experience would
            self.start_components()
            self.step, self.classes = 0, []
            if self.cfg.reinit_optimizer:
                self.optimizer = self.make_optimizer(self.parameters_to_train())
        self.classes = sorted(set(self.classes or []) | labels)

    def components(self, training):
        """(K, A, P) restricted to the components in use; earlier tasks' detached in training."""
        b = max(self.begun, 0) if training else self.begun      # -1: nothing initialised yet
        s, e = b * self.per_task, (b + 1) * self.per_task
        out = []
        for name in ("K", "A", "P"):
            p = self.prompts[name]
            out.append(torch.cat([p[:, :s].detach(), p[:, s:e]], dim=1) if training else p[:, :e])
        return out

    def forward(self, x, query, training):
        K, A, P = self.components(training)
        rows = (x,)
        if K.shape[1]:
            qa = query[:, None, None, :] * A[None]                                  # [B, layers, M, D]
            alpha = (F.normalize(qa, dim=-1) * F.normalize(K, dim=-1)[None]).sum(-1)  # [B, layers, M]
            rows = (x, torch.einsum("blm,lmtd->bltd", alpha, P))                    # [B, layers, length, D]
        feats = shard_call(self._cls_features, *rows)     # torchrun: this rank's rows (cl/distributed.py)
        return self.vit.head(feats), (K, A, P)

    def _cls_features(self, x, prompt=None):
        """[CLS] output of the ViT with the prompt's halves as prefix keys/values (row by row)."""
        h = self.cfg.length // 2
        prefixes = {} if prompt is None else {
            layer: (prompt[:, j, :h], prompt[:, j, h:]) for j, layer in enumerate(self.cfg.layers)}
        return vit_tokens(self.vit, self.normalize(x), prefixes=prefixes)[:, 0]

    def lr_at(self, epoch):
        """CODA's CosineSchedule: lr * cos(99 pi epoch / (200 (E - 1))), E = epochs per task."""
        return self.cfg.lr * math.cos(99 * math.pi * epoch / (200 * max(self.stream.epochs - 1, 1)))

    def loss(self, batch):
        if not self.stream.boundaries_visible:
            self.infer_task_start(batch.y)
        if self.cfg.cosine:                     # stepped per epoch
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_at(self.epoch())
        self.step += 1
        logits, (K, A, P) = self.forward(batch.x, self.query(batch), training=True)
        loss = self.task_loss(logits, batch.y)
        if self.cfg.ortho_mu > 0:
            loss = loss + self.cfg.ortho_mu * sum(_ortho_penalty(t.flatten(2)) for t in (K, A, P))
        return loss

    def predict(self, x):
        self.model.eval()
        with self.autocast():
            return self.mask_unseen(self.forward(x, frozen_query(self.vit, self.normalize(x)), training=False)[0].float())

    def extra_state(self):
        return {**super().extra_state(), "begun": self.begun, "step": self.step,
                "classes": list(self.classes) if self.classes is not None else None}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        if "begun" in state:
            self.begun, self.step, self.classes = int(state["begun"]), int(state["step"]), state["classes"]
        elif "task" in state:                     # a checkpoint written before hidden-boundary support
            self.begun = self.task - 1


def _ortho_penalty(t):
    """mean of (T T^T - I)^2 per layer for components T [layers, M, d]."""
    eye = torch.eye(t.shape[1], device=t.device)
    return ((t @ t.transpose(1, 2) - eye) ** 2).mean()
