"""Any Avalanche benchmark as our Scenario (optional; ``pip install cl-platform[avalanche]``).

``benchmark`` names a benchmark generator of ``avalanche.benchmarks`` (e.g. ``SplitMNIST``,
``PermutedMNIST``, ``SplitCIFAR10``) or is ``package.module:function`` returning an Avalanche
benchmark; ``args`` are its keyword arguments (``seed`` is filled from the run seed when the
generator takes one and it is not given). Each train/test experience is materialised once as
tensors with the benchmark's *eval* transforms (so the train data is not frozen with one random
augmentation; add ours with ``augment``); images without a tensor transform become uint8.

Train and test streams of equal length are paired; a single test experience (e.g. the
new-instances benchmarks) is used as the test data of every experience.
"""
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np
import torch

from cl.augment import build_augmentation
from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.errors import ConfigError
from cl.registry import SCENARIOS


@dataclass
class AvalancheConfig(ScenarioConfig):
    name: str = "avalanche"
    benchmark: str = "SplitMNIST"     # avalanche.benchmarks name, or 'package.module:function'
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the generator
    augment: str = "none"             # our batch augmentation on the training data
    batch_size: int = 512             # batch size used while converting to tensors


def _avalanche():
    try:
        import avalanche.benchmarks as benchmarks
    except ImportError as e:
        raise ConfigError(f"Scenario 'avalanche' needs avalanche-lib ({e}). Install it with "
                          "`pip install cl-platform[avalanche]` (or `pip install avalanche-lib`).") from None
    return benchmarks


def resolve_generator(name):
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"Cannot load Avalanche benchmark generator '{name}': {e}.") from None
    benchmarks = _avalanche()
    for mod in (benchmarks, getattr(benchmarks, "classic", None)):
        if mod is not None and hasattr(mod, name):
            return getattr(mod, name)
    raise ConfigError(f"avalanche.benchmarks has no generator '{name}' (e.g. SplitMNIST, PermutedMNIST, "
                      "SplitCIFAR10), or give 'package.module:function'.")


def to_tensors(dataset, batch_size):
    """An Avalanche (or any map-style) dataset of (x, y, ...) items -> TensorData."""
    if hasattr(dataset, "eval"):
        dataset = dataset.eval()
    xs, ys = [], []
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        xs += [_tensor(it[0]) for it in items]
        ys += [int(it[1]) for it in items]
    if not xs:
        raise ConfigError("An Avalanche experience is empty.")
    return TensorData(torch.stack(xs), torch.tensor(ys, dtype=torch.long))


def _tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)                               # PIL image or array
    if a.dtype == np.uint8:
        t = torch.from_numpy(a.copy())
        return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return torch.as_tensor(a, dtype=torch.float32)


@SCENARIOS.register("avalanche", config=AvalancheConfig)
def avalanche(cfg, seed=0):
    """Any Avalanche benchmark (by name or 'module:function') as a train_eval Scenario; needs avalanche-lib."""
    fn = resolve_generator(cfg.benchmark)
    aug = build_augmentation(cfg.augment)          # an unknown augmentation fails before any download
    args = dict(cfg.args)
    try:
        if "seed" not in args and "seed" in inspect.signature(fn).parameters:
            args["seed"] = seed
    except (TypeError, ValueError):
        pass
    try:
        bm = fn(**args)
    except TypeError as e:                         # missing or unknown keyword arguments
        raise ConfigError(f"Avalanche benchmark '{cfg.benchmark}' cannot be built with scenario.args {args}: {e}. "
                          "Set its arguments in scenario.args, e.g. scenario.args={n_experiences: 5}.") from None
    train_stream, test_stream = list(bm.train_stream), list(bm.test_stream)
    if len(test_stream) not in (1, len(train_stream)):
        raise ConfigError(f"Avalanche benchmark '{cfg.benchmark}' has {len(train_stream)} train and "
                          f"{len(test_stream)} test experiences; expected equal numbers or one test experience.")
    tests = [to_tensors(e.dataset, cfg.batch_size) for e in test_stream]
    exps = []
    for i, e in enumerate(train_stream):
        train = to_tensors(e.dataset, cfg.batch_size).with_transform(aug)
        test = tests[i] if len(tests) > 1 else tests[0]
        classes = sorted(int(c) for c in getattr(e, "classes_in_this_experience", torch.unique(train.y).tolist()))
        task = int(getattr(e, "task_label", 0) or 0)
        exps.append(Experience(index=i, train=train, test=test, classes=classes, task_id=task, domain=f"exp{i}"))
    n_classes = getattr(bm, "n_classes", None) or int(max(int(d.y.max()) for d in tests + [x.train for x in exps])) + 1
    order = [int(c) for c in getattr(bm, "classes_order", [])] or list(range(n_classes))
    return Scenario(name=f"avalanche/{cfg.benchmark}", experiences=exps, num_classes=int(n_classes),
                    input_shape=tuple(exps[0].train.x.shape[1:]), class_order=order)
