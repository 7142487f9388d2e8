"""In-memory data and the core stream objects (Experience, Scenario).

Data that fits in memory is held as tensors (uint8 images stay uint8) and served in whole
batches: shuffling, the uint8 -> float conversion and augmentation run as tensor ops on the
batch, on the run's device, with no per-sample Python in the hot loop.
"""
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional

import torch


class Batch(NamedTuple):
    x: torch.Tensor                   # float inputs on the device ([0, 1] for images)
    y: torch.Tensor                   # long labels [B], or float multi-hot targets [B, C] (multi-label)
    g: Optional[torch.Tensor] = None  # group id per sample (domain index in mixed streams)


class TensorData:
    """A labelled dataset held as tensors.

    x: uint8 images [N, C, H, W] (served as float in [0, 1]) or float features.
    y: long labels [N], or multi-hot targets [N, C] (multi-label: any float or bool tensor of 0/1 with
    two dimensions; stored as float32, see docs/multi-label.md).
    g: optional long group ids [N] (e.g. the domain of each sample).
    transform: optional batch function ``(x_float, generator) -> x_float`` for augmentation.
    """

    def __init__(self, x, y, g=None, transform: Optional[Callable] = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        y = torch.as_tensor(y)
        if y.dim() == 2 and (y.is_floating_point() or y.dtype == torch.bool):
            self.y = y.float()                       # multi-hot [N, C]
        else:
            self.y = y.long()
        self.x, self.g = x, g
        self.transform = transform

    @property
    def multilabel(self):
        """True when ``y`` holds multi-hot targets [N, C]."""
        return is_multihot(self.y)

    def __len__(self):
        return len(self.y)

    def subset(self, index):
        index = torch.as_tensor(index, dtype=torch.long)
        g = self.g[index] if self.g is not None else None
        return TensorData(self.x[index], self.y[index], g, self.transform)

    def with_transform(self, transform):
        return TensorData(self.x, self.y, self.g, transform)

    def to(self, device):
        g = self.g.to(device) if self.g is not None else None
        return TensorData(self.x.to(device), self.y.to(device), g, self.transform)

    def batches(self, batch_size, shuffle=False, generator=None, device="cpu", drop_last=False):
        """Yield Batch(x, y, g) on ``device``; ``generator`` seeds shuffling and augmentation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                x, y = self.x[sl], self.y[sl]
                g = self.g[sl] if self.g is not None else None
            else:
                idx = order[start:start + batch_size]
                x, y = self.x[idx], self.y[idx]
                g = self.g[idx] if self.g is not None else None
            x = to_float(x.to(device, non_blocking=True))
            if self.transform is not None:
                x = self.transform(x, generator)
            yield Batch(x, y.to(device, non_blocking=True), g.to(device) if g is not None else None)

    def num_batches(self, batch_size, drop_last=False):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)


def is_multihot(y):
    """True for multi-hot targets: a floating tensor [N, C] (single labels are long [N])."""
    return y.dim() == 2 and y.is_floating_point()


def to_float(x):
    """uint8 images -> float32 in [0, 1]; float tensors pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def concat(datas):
    """One TensorData from several (same transform as the first); token streams: ``TokenData.concat``."""
    if hasattr(datas[0], "concat"):
        return datas[0].concat(datas)
    gs = [d.g for d in datas]
    g = torch.cat(gs) if all(v is not None for v in gs) else None
    return TensorData(torch.cat([d.x for d in datas]), torch.cat([d.y for d in datas]), g,
                      datas[0].transform)


@dataclass
class Experience:
    """One step of the stream."""
    index: int
    train: Optional[TensorData]       # labelled training data (None in the online protocol)
    test: TensorData                  # evaluation data of this step (the stream itself when online)
    classes: List[int]
    task_id: int = 0
    domain: str = ""
    task_key: Optional[str] = None    # identity of ``test``: experiences with the same key share one
                                      # evaluation set (a recurring task); None: its own set

@dataclass
class Scenario:
    """An ordered stream of experiences plus what the runner needs to know."""
    name: str
    experiences: List[Experience]
    num_classes: int
    input_shape: tuple
    protocol: str = "train_eval"      # train_eval | online
    domains: List[str] = field(default_factory=list)  # names of group ids (online, per-domain error)
    source: Optional[TensorData] = None  # labelled source data (e.g. RMT warm-up / replay)
    class_order: List[int] = field(default_factory=list)
    reset_each_shift: bool = False    # online: restore the strategy's initial state at each new domain
    epochs: Optional[int] = None      # train_eval: passes per experience fixed by the scenario (online CL: 1)
    hide_boundaries: bool = False     # train_eval: task-free stream (as RunConfig.hide_boundaries)
    metric: str = "accuracy"          # train_eval matrix: accuracy (higher is better) | loss (token scenarios, lower)
    class_names: List[str] = field(default_factory=list)  # name of each label (zero-shot heads of CLIP models)
    class_templates: List[List[str]] = field(default_factory=list)  # per label, prompt templates with "{}"
                                      # for the name (empty: the model's default templates)
    label_type: str = "single"        # single (long labels) | multi (multi-hot targets; metric "map", docs/multi-label.md)
    test_all: Optional[TensorData] = None  # multi-label: the whole test set; each task's test set is its rows
                                      # with a label of the task (the per-step mAP/CF1/OF1 use the seen tasks' rows)

    def __post_init__(self):
        if self.protocol not in ("train_eval", "online"):
            raise ValueError(f"protocol must be 'train_eval' or 'online', got '{self.protocol}'")
        if self.label_type not in ("single", "multi"):
            raise ValueError(f"label_type must be 'single' or 'multi', got '{self.label_type}'")
        if self.label_type == "multi":
            self.metric = "map"               # multi-label: the mAP matrix replaces the accuracy matrix
        if self.metric not in ("accuracy", "loss", "map"):
            raise ValueError(f"metric must be 'accuracy', 'loss' or 'map', got '{self.metric}'")
        if not self.domains:
            self.domains = [e.domain or f"exp{e.index}" for e in self.experiences]
