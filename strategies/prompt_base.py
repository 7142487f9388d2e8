"""The base class of the prompt / parameter-efficient strategies on a frozen ViT.

L2P, DualPrompt, CODA-Prompt and LAE share their set-up (frozen backbone, trained module + head,
fresh optimizer per task), the query cache, train-time class masking and checkpoint state; the
ViT machinery itself (prompt-tuning, prefix-tuning, the prompt pool) is in strategies/_prompts.py
and the PET modules in strategies/_pet.py.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.data import is_multihot
from cl.multilabel import labels_in, masked_bce
from strategies._prompts import QueryCache, freeze_backbone, frozen_query, indexed, mask_to_classes, split_model
from cl.distributed import shard_call
from cl.strategy import Strategy

CACHE_BATCH = 256                     # images per frozen forward pass when filling the query cache (speed only)


@dataclass
class PromptConfig(StrategyConfig):
    """Fields shared by the prompt/PET strategies (each extends it with its paper's defaults)."""
    optimizer: str = "adam"           # all four authors' codes train with Adam
    # All four codes: training logits restricted to the current task's classes (L2P/DualPrompt
    # train_mask True; CODA-Prompt and LAE drop the other tasks' outputs) and a fresh optimizer at
    # each task (L2P/DualPrompt reinit_optimizer True; CODA-Prompt and LAE build one per task).
    train_mask: bool = True
    reinit_optimizer: bool = True
    input_size: int = 0               # resize inputs to NxN before the ViT (224 for ViT-B/16 on CIFAR; 0: as served)


class PromptStrategy(Strategy):
    """The hooks L2P, DualPrompt, CODA-Prompt and LAE share (each is ``class X(PromptStrategy)``).

    The subclass builds its trained module (prompts,
    pool or PET) in ``__init__`` under the attribute named by ``module_key``, which is also its key
    in ``extra_state``. Sets: ``normalize``, ``vit`` (see ``split_model``), ``cache`` (a
    ``QueryCache`` when ``cfg.query_cache``), ``classes`` (of the current experience), ``seen``
    (classes trained so far), ``task`` (experiences finished), ``step`` (optimizer steps in this
    experience) and ``steps_per_epoch``.
    """

    module_key = "prompts"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.normalize, self.vit = split_model(self.model, self.cfg.input_size)
        self.cache = QueryCache() if getattr(self.cfg, "query_cache", False) else None
        self.classes, self.seen, self.task, self.step, self.steps_per_epoch = None, set(), 0, 0, 1

    @property
    def trained(self):
        """The strategy's prompt/PET module."""
        return getattr(self, self.module_key)

    def configure_model(self):
        self.head_params = freeze_backbone(self.vit)
        self.trained.to(self.device)

    def parameters_to_train(self):
        return list(self.trained.parameters()) + self.head_params

    def before_experience(self, exp):
        self.classes, self.step = exp.classes, 0
        if self.cfg.reinit_optimizer:
            self.optimizer = self.make_optimizer(self.parameters_to_train())

    def train_data(self, exp):
        """The experience's data; with the query cache, filled for it and indexed (see QueryCache)."""
        self.steps_per_epoch = exp.train.num_batches(self.cfg.batch_size)
        if self.cache is None:
            return exp.train
        self.cache.fill(lambda x: frozen_query(self.vit, self.normalize(x)), exp.train, CACHE_BATCH, self.device)
        return indexed(exp.train)

    def epoch(self):
        """The current epoch of this experience (from ``step``, which ``loss`` advances)."""
        return self.step // max(self.steps_per_epoch, 1)

    def query(self, batch):
        """Frozen [CLS] query of a training batch, from the cache when it holds the batch."""
        if self.cache is not None and batch.g is not None:
            return self.cache.lookup(batch.g)
        return shard_call(lambda x: frozen_query(self.vit, self.normalize(x)), batch.x)   # torchrun: sharded

    def train_logits(self, logits, y):
        """Record the batch's classes as seen; mask the logits to the experience's classes (``train_mask``;
        the batch's labels when boundaries are hidden)."""
        labels = labels_in(y)
        self.seen.update(labels)
        if not self.cfg.train_mask:
            return logits
        return mask_to_classes(logits, self.classes if self.classes is not None else labels)

    def task_loss(self, logits, y):
        """The classification loss of a training batch. Single labels: cross-entropy on ``train_logits``.
        Multi-hot targets (multi-label scenarios, docs/multi-label.md): BCE with the logits and targets
        outside the experience's classes set to 0 (``train_mask``; the MLCIL masking of
        multi_lane/engine.py, ``cl.multilabel.masked_bce``), plain BCE without ``train_mask``."""
        if not is_multihot(y):
            return F.cross_entropy(self.train_logits(logits, y), y)
        labels = labels_in(y)
        self.seen.update(labels)
        classes = (self.classes if self.classes is not None else labels) if self.cfg.train_mask else None
        return masked_bce(logits, y, classes)

    def after_experience(self, exp):
        self.task += 1
        if self.cache is not None:
            self.cache.clear()

    def mask_unseen(self, logits):
        """Logits of classes not trained yet set to -inf (the papers' heads grow with the seen classes)."""
        return mask_to_classes(logits, sorted(self.seen)) if self.seen else logits

    def extra_state(self):
        return {"seen": sorted(self.seen), self.module_key: self.trained.state_dict(), "task": self.task}

    def load_extra_state(self, state):
        self.seen = set(state.get("seen", []))
        if self.module_key in state:
            self.trained.load_state_dict(state[self.module_key])
            self.task = int(state.get("task", 0))
