"""Class-incremental, instance-incremental and online (task-free, optionally blurry) splits of a
labelled dataset.

- ``class_split``: T experiences, each with its own classes (fixed, seeded or explicit order;
  uneven first step such as B50-Inc10 via ``first_classes``). Task id = experience index.
- ``instance_split``: T experiences of new instances of the same classes (every class in every
  experience, stratified); each experience is evaluated on the whole test set.
- ``online_class_split``: the class split as an online CL stream: one pass over each experience,
  boundaries hidden from the strategy, and optionally blurry boundaries (see ``blurry_split``).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from cl.augment import build_augmentation
from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, concat
from cl.errors import ConfigError
from cl.registry import SCENARIOS
from scenarios.datasets import load_dataset


@dataclass
class ClassSplitConfig(ScenarioConfig):
    name: str = "class_split"
    dataset: str = "digits"           # see scenarios.datasets.DATASETS
    root: str = "data"                # where the dataset lives (file or folder, per dataset)
    download: bool = False            # torchvision datasets: download when missing (needs internet)
    n_experiences: int = 5
    first_classes: int = 0            # classes in the first experience (0: even split); B50-Inc10 = 50 with 6 experiences
    class_order: Optional[List[int]] = None  # explicit class order (overrides shuffle_classes)
    shuffle_classes: bool = False     # seeded random class order (False: 0, 1, 2, ...)
    augment: str = "none"             # training augmentation: none | crop_flip
    train_fraction: float = 1.0       # use a seeded fraction of the training data (quick runs)
    classes: Optional[List[int]] = None  # use only these classes, in this order (overrides class_order)
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # keyword args of the dataset adapter (synthetic: shape, ...)


def class_order_for(num_classes, order=None, shuffle=False, seed=0):
    """The class order: explicit (validated), seeded permutation, or 0..C-1."""
    if order is not None:
        order = [int(c) for c in order]
        unknown = sorted(set(c for c in order if not 0 <= c < num_classes))
        dup = sorted(set(c for c in order if order.count(c) > 1))
        if unknown or dup or len(order) != num_classes:
            raise ConfigError(
                f"Invalid scenario.class_order: it must list each of the {num_classes} classes 0..{num_classes - 1} "
                f"exactly once (unknown: {unknown}, duplicated: {dup}, length {len(order)}).")
        return order
    if shuffle:
        return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return list(range(num_classes))


def class_subset(num_classes, classes):
    """``scenario.classes`` validated: distinct labels in 0..C-1 (the rest of the dataset is dropped)."""
    classes = [int(c) for c in classes]
    bad = sorted(set(c for c in classes if not 0 <= c < num_classes or classes.count(c) > 1))
    if bad:
        raise ConfigError(f"Invalid scenario.classes: {bad} are out of 0..{num_classes - 1} or repeated; "
                          "list distinct class labels of the dataset.")
    return classes


def split_sizes(num_classes, n_experiences, first_classes=0):
    """Classes per experience: an even split, or ``first_classes`` then the rest evenly."""
    if n_experiences < 1:
        raise ConfigError(f"scenario.n_experiences must be >= 1, got {n_experiences}.")
    if first_classes:
        rest, n_rest = num_classes - first_classes, n_experiences - 1
        if first_classes >= num_classes and n_rest > 0 or first_classes > num_classes or (n_rest and rest % n_rest) \
                or (n_rest == 0 and rest):
            raise ConfigError(f"Cannot split {num_classes} classes into a first experience of {first_classes} and "
                              f"{n_rest} equal experiences; choose first_classes/n_experiences that divide evenly.")
        return [first_classes] + [rest // n_rest] * n_rest if n_rest else [first_classes]
    if n_experiences > num_classes or num_classes % n_experiences:
        raise ConfigError(f"Cannot split {num_classes} classes evenly into {n_experiences} experiences "
                          f"(need a divisor of {num_classes}).")
    return [num_classes // n_experiences] * n_experiences


def split_by_class(train, test, order, sizes):
    """[(classes, train_subset, test_subset)] following ``order`` in chunks of ``sizes``."""
    out, start = [], 0
    for size in sizes:
        classes = order[start:start + size]
        start += size
        cls = torch.tensor(classes)
        tr = train.subset(torch.nonzero(torch.isin(train.y, cls)).flatten()) if train is not None else None
        te = test.subset(torch.nonzero(torch.isin(test.y, cls)).flatten())
        out.append((classes, tr, te))
    return out


@SCENARIOS.register("class_split", config=ClassSplitConfig)
def class_split(cfg, seed=0):
    """Class-incremental split of a labelled dataset (task ids = experience index, for task-IL)."""
    train, test, info = _load(cfg, seed)
    num_classes = info["num_classes"]
    if cfg.classes:
        order = class_subset(num_classes, cfg.classes)
    else:
        order = class_order_for(num_classes, cfg.class_order, cfg.shuffle_classes, seed)
    sizes = split_sizes(len(order), cfg.n_experiences, cfg.first_classes)
    exps = [Experience(index=i, train=tr, test=te, classes=classes, task_id=i, domain=f"classes {classes}")
            for i, (classes, tr, te) in enumerate(split_by_class(train, test, order, sizes))]
    return Scenario(name=f"class_split/{cfg.dataset}", experiences=exps, num_classes=num_classes,
                    input_shape=tuple(train.x.shape[1:]), class_order=order, class_names=list(info["class_names"]))


# ---------------------------------------------------------------------------- instance-incremental
@dataclass
class InstanceSplitConfig(ScenarioConfig):
    name: str = "instance_split"
    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    n_experiences: int = 5
    augment: str = "none"
    train_fraction: float = 1.0


def stratified_chunks(y, n_chunks, generator):
    """Indices of ``y`` cut into ``n_chunks`` disjoint parts with each class spread evenly (seeded)."""
    chunks = [[] for _ in range(n_chunks)]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        offset = int(torch.randint(n_chunks, (1,), generator=generator))  # spreads remainders over chunks
        for j, part in enumerate(torch.tensor_split(idx, n_chunks)):
            chunks[(j + offset) % n_chunks].append(part)
    return [torch.cat(ch).sort().values for ch in chunks]


@SCENARIOS.register("instance_split", config=InstanceSplitConfig)
def instance_split(cfg, seed=0):
    """New instances of the same classes in each experience (NI); every experience tests on the full test set."""
    train, test, info = _load(cfg, seed)
    if cfg.n_experiences < 1:
        raise ConfigError(f"scenario.n_experiences must be >= 1, got {cfg.n_experiences}.")
    smallest = int(torch.bincount(train.y).min()) if len(train) else 0
    if cfg.n_experiences > smallest:
        raise ConfigError(f"Cannot give all classes to {cfg.n_experiences} experiences: the smallest class has "
                          f"{smallest} training samples. Lower scenario.n_experiences.")
    classes = list(range(info["num_classes"]))
    parts = stratified_chunks(train.y, cfg.n_experiences, torch.Generator().manual_seed(seed))
    exps = [Experience(index=i, train=train.subset(idx), test=test, classes=classes, task_id=0, domain=f"instances {i}",
                       task_key="all")
            for i, idx in enumerate(parts)]
    return Scenario(name=f"instance_split/{cfg.dataset}", experiences=exps, num_classes=info["num_classes"],
                    input_shape=tuple(train.x.shape[1:]), class_order=classes, class_names=list(info["class_names"]))


def _load(cfg, seed):
    """Dataset of a split config with train_fraction and augmentation applied."""
    train, test, info = load_dataset(cfg.dataset, root=cfg.root, download=cfg.download, seed=seed,
                                     **dict(getattr(cfg, "dataset_args", None) or {}))
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"Dataset '{cfg.dataset}' is empty (train {len(train)}, test {len(test)} samples).")
    if not 0 < cfg.train_fraction <= 1:
        raise ConfigError(f"scenario.train_fraction must be in (0, 1], got {cfg.train_fraction}.")
    if cfg.train_fraction < 1:
        n = max(1, int(len(train) * cfg.train_fraction))
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n])
    return train.with_transform(build_augmentation(cfg.augment)), test, info


# ---------------------------------------------------------------------------- online / task-free
@dataclass
class OnlineClassSplitConfig(ClassSplitConfig):
    name: str = "online_class_split"
    blurry: float = 0.0               # fraction M of each experience's samples moved to other experiences (Blurry-M)
    blurry_spread: str = "any"        # any: to a uniformly chosen other experience | neighbours: to t-1 / t+1
    hide_boundaries: bool = True      # task-free: before/after_experience are not called
    one_pass: bool = True             # each sample is seen once (overrides strategy.epochs)


def blurry_split(y, parts, fraction, spread, generator):
    """Blurry boundaries: per class, ``round(fraction * n_c)`` randomly chosen training samples of the
    experience that owns the class are moved to other experiences.

    ``spread='any'``: the moved samples are dealt round-robin (in random order) over the other T-1
    experiences, so each experience holds about ``fraction`` foreign samples when experiences have
    equal size (the "Blurry-M" setting, M = 100 * fraction, of Bang et al., Rainbow Memory, CVPR
    2021, also used for the blurry part of Koh et al.'s i-Blurry, ICLR 2022).
    ``spread='neighbours'``: they are dealt alternately to experiences t-1 and t+1 (only the existing
    one at the ends), so classes leak into adjacent steps only (gradual boundaries).
    ``parts``: list of index tensors (one per experience); returns the new list (sorted indices).
    """
    n_exp = len(parts)
    if fraction == 0 or n_exp == 1:
        return parts
    out = [[] for _ in range(n_exp)]
    for t, idx in enumerate(parts):
        for c in torch.unique(y[idx]).tolist():
            own = idx[y[idx] == c]
            own = own[torch.randperm(len(own), generator=generator)]
            k = int(round(fraction * len(own)))
            out[t].append(own[k:])
            if spread == "any":
                targets = [j for j in range(n_exp) if j != t]
            else:
                targets = [j for j in (t - 1, t + 1) if 0 <= j < n_exp]
            start = int(torch.randint(len(targets), (1,), generator=generator))
            for m in range(k):
                out[targets[(start + m) % len(targets)]].append(own[m:m + 1])
    return [torch.cat(o).sort().values for o in out]


@SCENARIOS.register("online_class_split", config=OnlineClassSplitConfig)
def online_class_split(cfg, seed=0):
    """Class split as an online stream: one pass, hidden boundaries, optional blurry boundaries (Blurry-M)."""
    if not 0 <= cfg.blurry < 1:
        raise ConfigError(f"scenario.blurry must be in [0, 1), got {cfg.blurry}.")
    if cfg.blurry_spread not in ("any", "neighbours"):
        raise ConfigError(f"scenario.blurry_spread must be 'any' or 'neighbours', got '{cfg.blurry_spread}'.")
    base = class_split(cfg, seed)
    train = concat([e.train for e in base.experiences])
    parts, start = [], 0
    for e in base.experiences:
        parts.append(torch.arange(start, start + len(e.train)))
        start += len(e.train)
    parts = blurry_split(train.y, parts, cfg.blurry, cfg.blurry_spread, torch.Generator().manual_seed(seed + 1))
    for e, idx in zip(base.experiences, parts):
        e.train = train.subset(idx)
    base.name = f"online_class_split/{cfg.dataset}"
    base.epochs = 1 if cfg.one_pass else None
    base.hide_boundaries = cfg.hide_boundaries
    return base
