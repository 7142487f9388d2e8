"""A tiny synthetic domain-shift stream for tests and smoke runs of the online protocol."""
from dataclasses import dataclass

import torch

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.registry import SCENARIOS
from scenarios.datasets import synthetic


@dataclass
class SyntheticShiftConfig(ScenarioConfig):
    name: str = "synthetic_shift"
    n_domains: int = 3
    num_classes: int = 4
    n_per_class: int = 64             # test samples per class and domain
    shift: float = 0.3                # per-domain brightness offset and noise scale
    reset_each_shift: bool = False


@SCENARIOS.register("synthetic_shift", config=SyntheticShiftConfig)
def synthetic_shift(cfg, seed=0):
    """Synthetic images under growing shifts (offset + noise) per domain; online protocol."""
    source, test, info = synthetic(seed=seed, num_classes=cfg.num_classes, n_train=4 * cfg.n_per_class,
                                n_test=cfg.n_per_class)
    g = torch.Generator().manual_seed(seed + 7)
    exps = []
    for d in range(cfg.n_domains):
        x = test.x.float() / 255
        x = (x + cfg.shift * d + cfg.shift * d * torch.randn(x.shape, generator=g)).clamp(0, 1)
        perm = torch.randperm(len(x), generator=g)
        data = TensorData((x[perm] * 255).round().to(torch.uint8), test.y[perm])
        exps.append(Experience(index=d, train=None, test=data, classes=list(range(cfg.num_classes)),
                               domain=f"shift{d}"))
    return Scenario(name="synthetic_shift", experiences=exps, num_classes=cfg.num_classes,
                    input_shape=tuple(test.x.shape[1:]), protocol="online", source=source,
                    reset_each_shift=cfg.reset_each_shift, class_names=list(info["class_names"]))
