"""Power-law recurrence of tasks (a naturalistic learning environment).

Motivated by Gandhi, Shah, Marupudi & Varma, "Catastrophic Interference is Mitigated in
Naturalistic Power-Law Learning Environments" (arXiv:2401.10393; v3 titled "Natural Mitigation of
Catastrophic Interference: Continual Learning in Power-Law Learning Environments"): "the
probability of encountering a task decreases as a power-law of the time since it was last
performed" (Anderson & Schooler, 1991).

OUR READING, not verified against the paper's text or code (neither could be obtained; only the
abstracts were available). The schedule implemented here:

- Tasks 0..K-1 are introduced in order. Phase k starts with one experience of the new task k
  (all its training data), followed by ``rehearsals`` experiences that each re-present one task
  already seen (0..k, the new one included).
- Time t counts experiences. A rehearsal at time t picks seen task j with probability
  ``(t - last_j) ** (-alpha) / sum_i (t - last_i) ** (-alpha)``, where ``last_j`` is the time task j
  was last presented (so a task just seen is the likeliest, and the probability decays as a power
  law of the time since). ``alpha = 0`` is uniform rehearsal; large ``alpha`` repeats the latest.
  Default ``alpha = 0.5``: the ACT-R / Anderson-Schooler decay d = 0.5 (our choice).
- A rehearsal presents a seeded random ``rehearsal_fraction`` of the task's training data (the
  "amount of data rehearsed"; fresh draw per rehearsal).

The stream has K * (1 + rehearsals) experiences; all experiences of a task share its ``task_key``,
so the accuracy matrix has one row per experience and one column per task, and a task weighs the
same in every summary however often it recurs (docs/metrics.md). Tasks come from ``permuted`` / ``rotated`` domains (the v1 paper uses
Permuted MNIST) or a ``class_split`` (v3 uses class-incremental splits).
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario
from cl.errors import ConfigError
from cl.registry import SCENARIOS


@dataclass
class PowerLawConfig(ScenarioConfig):
    name: str = "power_law"
    tasks: str = "permuted"           # permuted | rotated | class_split
    dataset: str = "mnist"
    root: str = "data"
    download: bool = False
    n_tasks: int = 5
    rehearsals: int = 2               # rehearsal experiences after each new task
    alpha: float = 0.5                # power-law exponent (our choice: ACT-R decay 0.5)
    rehearsal_fraction: float = 0.25  # share of a task's training data in one rehearsal
    train_fraction: float = 1.0
    class_order: Optional[List[int]] = None   # class_split tasks: explicit class order
    shuffle_classes: bool = False
    angles: Optional[List[float]] = field(default=None)  # rotated tasks


def power_law_schedule(n_tasks, rehearsals, alpha, seed=0):
    """[(task, is_new)] of length n_tasks * (1 + rehearsals); see the module docstring."""
    if n_tasks < 1 or rehearsals < 0:
        raise ConfigError(f"power_law needs n_tasks >= 1 and rehearsals >= 0, got {n_tasks}, {rehearsals}.")
    if alpha < 0:
        raise ConfigError(f"scenario.alpha must be >= 0, got {alpha}.")
    rng = np.random.default_rng(seed)
    last, out, t = {}, [], 0
    for k in range(n_tasks):
        out.append((k, True))
        last[k] = t
        t += 1
        for _ in range(rehearsals):
            seen = sorted(last)
            w = np.array([(t - last[j]) ** (-alpha) for j in seen], dtype=float)
            j = seen[int(rng.choice(len(seen), p=w / w.sum()))]
            out.append((j, False))
            last[j] = t
            t += 1
    return out


def base_tasks(cfg, seed):
    """[(name, train, test, classes)], num_classes, input_shape for the configured task family."""
    if cfg.tasks in ("permuted", "rotated"):
        from scenarios.domain_stream import PermutedConfig, RotatedConfig, transform_tasks
        sub = (PermutedConfig if cfg.tasks == "permuted" else RotatedConfig)(
            dataset=cfg.dataset, root=cfg.root, download=cfg.download, n_experiences=cfg.n_tasks,
            train_fraction=cfg.train_fraction)
        if cfg.tasks == "rotated":
            sub.angles = list(cfg.angles) if cfg.angles is not None else None
        tasks, nc, shape, _ = transform_tasks(cfg.tasks, sub, seed)
        return [(n, tr, te, list(range(nc))) for n, tr, te in tasks], nc, shape
    if cfg.tasks == "class_split":
        from scenarios.class_split import ClassSplitConfig, class_split
        sub = ClassSplitConfig(dataset=cfg.dataset, root=cfg.root, download=cfg.download, n_experiences=cfg.n_tasks,
                               class_order=list(cfg.class_order) if cfg.class_order is not None else None,
                               shuffle_classes=cfg.shuffle_classes, train_fraction=cfg.train_fraction)
        s = class_split(sub, seed)
        return [(f"task{e.index}", e.train, e.test, e.classes) for e in s.experiences], s.num_classes, s.input_shape
    raise ConfigError(f"scenario.tasks must be permuted, rotated or class_split, got '{cfg.tasks}'.")


@SCENARIOS.register("power_law", config=PowerLawConfig)
def power_law(cfg, seed=0):
    """Tasks recur with probability decaying as a power law of the time since last seen (our reading of arXiv:2401.10393)."""
    if not 0 < cfg.rehearsal_fraction <= 1:
        raise ConfigError(f"scenario.rehearsal_fraction must be in (0, 1], got {cfg.rehearsal_fraction}.")
    schedule = power_law_schedule(cfg.n_tasks, cfg.rehearsals, cfg.alpha, seed)
    tasks, nc, shape = base_tasks(cfg, seed)
    g = torch.Generator().manual_seed(seed + 4242)
    exps = []
    for i, (k, new) in enumerate(schedule):
        name, train, test, classes = tasks[k]
        if not new:
            n = max(1, int(len(train) * cfg.rehearsal_fraction))
            train = train.subset(torch.randperm(len(train), generator=g)[:n].sort().values)
        exps.append(Experience(index=i, train=train, test=test, classes=classes, task_id=k, task_key=name,
                               domain=f"{name}{'' if new else ' (rehearsal)'}"))
    return Scenario(name=f"power_law/{cfg.tasks}/{cfg.dataset}", experiences=exps, num_classes=nc,
                    input_shape=tuple(shape), class_order=list(range(nc)))
