"""RoTTA: robust test-time adaptation under correlated (non-i.i.d.) streams.

L. Yuan, B. Xie, S. Li, "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023
(arXiv:2303.13899). Follows the RMT authors' benchmark (mariodoebler/test-time-adaptation
``classification/methods/rotta.py``, built on BIT-DA/RoTTA).

* Robust BatchNorm: every BatchNorm layer is replaced by one whose statistics are a moving average
  of its source running statistics and of the batches it sees in train mode, momentum ``alpha``
  (mu <- (1 - alpha) mu + alpha mu_batch, biased batch variance); in eval mode it normalizes with
  the averaged statistics. Its affine weight/bias (and LayerNorm/GroupNorm's) are trained.
* A teacher (EMA of the student, momentum 1 - ``nu``, over all parameters) predicts each test
  batch (eval mode, before any update); its pseudo-label and entropy enter every sample into the
  category-balanced memory (CSTU) of ``memory_size``: a sample of class k replaces, when class k is
  full or the memory is full, the item with the highest score lambda_t / (1 + exp(-age/capacity))
  + lambda_u * entropy / ln K among class k (or among the most occupied classes) if that score is
  higher than the new sample's; every item ages by one per sample seen.
* Every ``update_frequency`` samples (counted over batches), one step on the memory: loss = mean
  over the items of w(age) * CE(student(strong view), softmax(teacher(items))) with the
  timeliness weight w = exp(-a) / (1 + exp(-a)), a = age / capacity, in train mode (so both robust
  BatchNorms move), the strong view CoTTA's augmentation of the whole memory batch; then the EMA.
The returned prediction is the teacher's.

Defaults: ``cfgs/cifar10_c/rotta.yaml`` (Adam, lr 1e-3, batch 200; ImageNet-C: Adam 1e-3, batch
64) and ``conf.py`` ROTTA.MEMORY_SIZE 64, UPDATE_FREQUENCY 64, NU 0.001, ALPHA 0.05, LAMBDA_T 1.0,
LAMBDA_U 1.0.
"""
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_augment import CottaAugment
from strategies.mean_teacher import frozen_copy, soft_ce


@dataclass
class RoTTAConfig(StrategyConfig):
    name: str = "rotta"
    optimizer: str = "adam"        # cfgs/cifar10_c/rotta.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C too)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    memory_size: int = 64          # conf.py ROTTA.MEMORY_SIZE
    update_frequency: int = 64     # ROTTA.UPDATE_FREQUENCY (samples between updates)
    nu: float = 0.001              # ROTTA.NU: teacher EMA momentum is 1 - nu
    alpha: float = 0.05            # ROTTA.ALPHA: robust BatchNorm momentum
    lambda_t: float = 1.0          # ROTTA.LAMBDA_T (age term of the memory score)
    lambda_u: float = 1.0          # ROTTA.LAMBDA_U (uncertainty term)


class RobustBatchNorm(nn.Module):
    """BatchNorm whose statistics are an EMA (``momentum``) of the source statistics and the batches
    seen in train mode; built from a BatchNorm1d/2d layer with running statistics."""

    def __init__(self, bn, momentum):
        super().__init__()
        if bn.running_mean is None:
            raise ConfigError("rotta replaces BatchNorm layers by robust ones that start from the source running "
                              "statistics, but a layer has none. Use a model trained with running statistics.")
        self.momentum, self.eps = momentum, bn.eps
        self.dims = [0] if isinstance(bn, nn.BatchNorm1d) else [0, 2, 3]
        self.register_buffer("source_mean", bn.running_mean.detach().clone())
        self.register_buffer("source_var", bn.running_var.detach().clone())
        self.weight = copy.deepcopy(bn.weight)
        self.bias = copy.deepcopy(bn.bias)

    def forward(self, x):
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            b_var, b_mean = torch.var_mean(x, dim=self.dims, unbiased=False, keepdim=False)
            mean = (1 - self.momentum) * self.source_mean + self.momentum * b_mean
            var = (1 - self.momentum) * self.source_var + self.momentum * b_var
            self.source_mean, self.source_var = mean.detach().clone(), var.detach().clone()
            mean, var = mean.view(shape), var.view(shape)
        else:
            mean, var = self.source_mean.view(shape), self.source_var.view(shape)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


class CategoryBalancedMemory:
    """RoTTA's CSTU memory: per class a list of [image, uncertainty, age]."""

    def __init__(self, capacity, num_classes, lambda_t, lambda_u):
        self.capacity, self.num_classes = capacity, num_classes
        self.per_class = capacity / num_classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.items = [[] for _ in range(num_classes)]

    def __len__(self):
        return sum(len(c) for c in self.items)

    def score(self, age, uncertainty):
        return (self.lambda_t * 1 / (1 + math.exp(-age / self.capacity))
                + self.lambda_u * uncertainty / math.log(self.num_classes))

    def add(self, x, label, uncertainty):
        """Offer one sample; then every stored item (the new one included) ages by one."""
        if self._make_room(label, self.score(0, uncertainty)):
            self.items[label].append([x, uncertainty, 0])
        for cls in self.items:
            for item in cls:
                item[2] += 1

    def _make_room(self, label, new_score):
        if len(self.items[label]) < self.per_class:
            if len(self) < self.capacity:
                return True
            counts = [len(c) for c in self.items]
            return self._remove_worst([k for k, n in enumerate(counts) if n == max(counts)], new_score)
        return self._remove_worst([label], new_score)

    def _remove_worst(self, classes, new_score):
        """Drop the highest-scoring item of ``classes`` if it scores above ``new_score``; True if there is room."""
        best = None
        for k in classes:
            for i, (_, unc, age) in enumerate(self.items[k]):
                s = self.score(age, unc)
                if best is None or s >= best[0]:
                    best = (s, k, i)
        if best is None:
            return True
        if best[0] > new_score:
            self.items[best[1]].pop(best[2])
            return True
        return False

    def batch(self):
        """(images [M, ...] or None, ages / capacity as a list) in class order."""
        flat = [item for cls in self.items for item in cls]
        if not flat:
            return None, []
        return torch.stack([x for x, _, _ in flat]), [age / self.capacity for _, _, age in flat]

    def state(self):
        return [[[x, unc, age] for x, unc, age in cls] for cls in self.items]

    def load(self, state):
        self.items = [[[x, float(unc), int(age)] for x, unc, age in cls] for cls in state]


@STRATEGIES.register("rotta")
class RoTTA(Strategy):
    """Robust BatchNorm + category-balanced memory with timeliness weights + EMA teacher."""

    protocols = ("online",)

    Config = RoTTAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.memory_size < 1 or cfg.update_frequency < 1:
            raise ConfigError("strategy.memory_size and strategy.update_frequency must be >= 1.")
        if not 0.0 <= cfg.alpha <= 1.0 or not 0.0 <= cfg.nu <= 1.0:
            raise ConfigError("strategy.alpha and strategy.nu must be in [0, 1].")
        self.teacher = None
        self.memory = self.new_memory()
        self.seen = 0                  # test samples seen (updates every update_frequency)
        self.augment = None

    def new_memory(self):
        c = self.cfg
        return CategoryBalancedMemory(c.memory_size, self.num_classes, c.lambda_t, c.lambda_u)

    def configure_model(self):
        self.model.requires_grad_(False)
        for m in self.model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.requires_grad_(True)
        count = 0
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    setattr(parent, name, RobustBatchNorm(child, self.cfg.alpha).requires_grad_(True))
                    count += 1
        if count == 0 and not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("rotta adapts normalization layers, but the model has no BatchNorm, LayerNorm or "
                              "GroupNorm layer. Use a model with normalization layers.")
        self.teacher = frozen_copy(self.model)
        shape = self.stream.input_shape or None
        if shape is not None and len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1])

    def parameters_to_train(self):
        return [p for n, p in self.model.named_parameters()
                if p.requires_grad and n.rsplit(".", 1)[-1] in ("weight", "bias")]

    def memory_loss(self):
        """Timeliness-weighted CE of the student on strong views of the memory against the teacher."""
        self.model.train()
        self.teacher.train()
        images, ages = self.memory.batch()
        strong = self.augment(images)
        teacher_out = self.teacher(images)
        student_out = self.model(strong)
        ages = torch.tensor(ages).float().to(images.device)
        weight = torch.exp(-ages) / (1 + torch.exp(-ages))
        return (soft_ce(student_out.float(), teacher_out.float()) * weight).mean()

    @torch.no_grad()
    def update_teacher(self):
        nu = 1 - self.cfg.nu
        if nu < 1.0:
            for t, s in zip(self.teacher.parameters(), self.model.parameters()):
                t.data = nu * t.data + (1 - nu) * s.data

    def forward_and_adapt(self, x):
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1])
        with torch.no_grad(), self.autocast():
            self.model.eval()
            self.teacher.eval()
            out = self.teacher(x).float()
            probs = torch.softmax(out, dim=1)
            labels = torch.argmax(probs, dim=1)
            entropy = torch.sum(-probs * torch.log(probs + 1e-6), dim=1)
        for i in range(len(x)):
            self.memory.add(x[i].clone(), labels[i].item(), entropy[i].item())
            self.seen += 1
            if self.seen % self.cfg.update_frequency == 0:
                with torch.enable_grad(), self.autocast():
                    loss = self.memory_loss()
                self.optimize(loss)
                self.update_teacher()
        return out

    @torch.no_grad()
    def predict(self, x):
        """The teacher's prediction with its averaged statistics (no memory, no update)."""
        self.teacher.eval()
        with self.autocast():
            return self.teacher(x).float()

    def extra_state(self):
        return {"teacher": self.teacher.state_dict(), "memory": self.memory.state(), "seen": self.seen}

    def load_extra_state(self, state):
        self.teacher.load_state_dict(state["teacher"])
        self.memory = self.new_memory()
        self.memory.load(state["memory"])
        self.seen = int(state["seen"])
