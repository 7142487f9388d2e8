"""Multi-label class-incremental splits (MLCIL): ``multilabel_split``.

The classes are cut into tasks in ``class_order`` (``base_classes`` first, then ``increment`` per
task); a sample belongs to the experience of every task that holds one of its labels, in training
and test alike, and its labels of other tasks are hidden (zeroed) in that experience's training
targets (``cl.multilabel``, after ``multi_lane/datasets.py`` ``split_single_dataset`` and the
target masking of ``multi_lane/engine.py``). The test targets keep every label: each task's test
set is its samples, and the per-step metrics use the test samples holding a seen class.

Named splits (``split``), with the authors' class order (sorted class names, no shuffling:
``--shuffle none`` in ``multi_lane/configs/{coco,voc}.py``) and their task counts
(``configs/coco.py``: base 10, 8 tasks; ``train_coco_40.sh``: base 40, 5 tasks; ``configs/voc.py``:
base 4, 5 tasks; ``train_voc_10.sh``: base 10, 6 tasks):

    coco_b0_c10  COCO 2014, 8 tasks of 10      coco_b40_c10  COCO 2014, 40 then 4 x 10
    voc_b0_c4    VOC 2007, 5 tasks of 4        voc_b10_c2    VOC 2007, 10 then 5 x 2

``cifar10_mosaic`` (2x2 mosaics of real CIFAR-10 JPEG-copy images, labels = the tiles' classes) is
a STAND-IN for offline runs, not a multi-label benchmark. See docs/multi-label.md.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from cl.augment import build_augmentation
from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.errors import ConfigError
from cl.multilabel import hide_other_labels, multilabel_split as split_rows, task_classes
from cl.registry import SCENARIOS
from scenarios import multilabel_data as md
from scenarios.class_split import class_order_for

SPLITS = {  # name: (dataset, base classes, increment)
    "coco_b0_c10": ("coco2014", 10, 10),
    "coco_b40_c10": ("coco2014", 40, 10),
    "voc_b0_c4": ("voc2007", 4, 4),
    "voc_b10_c2": ("voc2007", 10, 2),
}
DATASETS = ("voc2007", "coco2014", "cifar10_mosaic", "synthetic_mosaic")


@dataclass
class MultiLabelSplitConfig(ScenarioConfig):
    name: str = "multilabel_split"
    dataset: str = "cifar10_mosaic"   # voc2007 | coco2014 | cifar10_mosaic (stand-in) | synthetic_mosaic (tests)
    root: str = "data"                # VOC: the folder holding VOCdevkit/; COCO: holding annotations/, train2014/, val2014/
    split: str = ""                   # coco_b0_c10 | coco_b40_c10 | voc_b0_c4 | voc_b10_c2 (sets the two below)
    base_classes: int = 0             # classes of the first task (0: increment)
    increment: int = 2                # classes of each later task
    class_order: Optional[List[int]] = None  # explicit order (default: the dataset's, i.e. sorted names)
    image_size: int = 224             # VOC/COCO: shorter side resized, centred square crop (held as uint8)
    train_fraction: float = 1.0       # a seeded fraction of the training images (quick runs)
    augment: str = "none"             # none | crop_flip
    n_train: int = 2000               # mosaics: training / test mosaics drawn
    n_test: int = 500
    tile_size: int = 0                # mosaics: tiles resized to this side first (0: as stored; 16 -> 32x32 CIFAR mosaics)
    num_classes: int = 6              # synthetic_mosaic only


def _load(cfg, seed):
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"scenario.dataset='{cfg.dataset}' is not a multi-label dataset; choose one of "
                          f"{', '.join(DATASETS)}.")
    if cfg.dataset == "voc2007":
        return md.voc2007(cfg.root, cfg.image_size)
    if cfg.dataset == "coco2014":
        return md.coco2014(cfg.root, cfg.image_size)
    if cfg.dataset == "cifar10_mosaic":
        return md.cifar10_mosaic(cfg.root, cfg.n_train, cfg.n_test, seed, cfg.tile_size)
    return md.synthetic_mosaic(cfg.num_classes, cfg.n_train, cfg.n_test, seed=seed)


@SCENARIOS.register("multilabel_split", config=MultiLabelSplitConfig)
def multilabel_split(cfg, seed=0):
    """Class-incremental split of a multi-label dataset (module docstring)."""
    base, increment = cfg.base_classes, cfg.increment
    if cfg.split:
        if cfg.split not in SPLITS:
            raise ConfigError(f"Unknown scenario.split '{cfg.split}'; choose one of {', '.join(SPLITS)} or leave it "
                              "empty and set base_classes/increment.")
        want, base, increment = SPLITS[cfg.split]
        if cfg.dataset != want:
            raise ConfigError(f"scenario.split={cfg.split} is a split of {want}, but scenario.dataset={cfg.dataset}. "
                              f"Set scenario.dataset={want}.")
    train, test, names = _load(cfg, seed)
    C = train.y.shape[1]
    if not 0 < cfg.train_fraction <= 1:
        raise ConfigError(f"scenario.train_fraction must be in (0, 1], got {cfg.train_fraction}.")
    if cfg.train_fraction < 1:
        n = max(1, int(len(train) * cfg.train_fraction))
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values)
    order = class_order_for(C, cfg.class_order)
    tasks = task_classes(order, base, increment)
    transform = build_augmentation(cfg.augment)
    exps = []
    for i, (classes, tr, te) in enumerate(zip(tasks, split_rows(train.y, tasks), split_rows(test.y, tasks))):
        if len(tr) == 0 or len(te) == 0:
            raise ConfigError(f"Task {i} (classes {classes}) has {len(tr)} training and {len(te)} test samples; every "
                              "task needs both. Use more data (train_fraction, n_train/n_test) or another split.")
        train_t = TensorData(train.x[tr], hide_other_labels(train.y[tr], classes), transform=transform)
        exps.append(Experience(index=i, train=train_t, test=test.subset(te), classes=list(classes), task_id=i,
                               domain=f"classes {list(classes)}"))
    return Scenario(name=f"multilabel_split/{cfg.dataset}", experiences=exps, num_classes=C,
                    input_shape=tuple(train.x.shape[1:]), class_order=order, class_names=list(names),
                    label_type="multi", test_all=test)
