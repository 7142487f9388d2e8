"""Corruption sequences for continual test-time adaptation (online protocol).

The stream is built from a clean test set by applying ``scenarios.corruptions.corrupt``
(``data_format=generate``), or read from the official files:

- ``cifar10_c`` / ``cifar100_c``: ``CORRUPTED_ROOT/<corruption>.npy`` holding the 5 severities
  one after the other (5 x 10,000 images, NHWC uint8) and ``CORRUPTED_ROOT/labels.npy``
  (Hendrycks & Dietterich, ICLR 2019, arXiv:1903.12261).
- ``imagenet_c``: ``CORRUPTED_ROOT/<corruption>/<severity>/<wnid>/*.JPEG``; classes are the
  sorted wnids (the standard ImageNet indices). All 50,000 images by default; a 5,000-image subset
  either from a list file (``imagenet_list``: lines ``<wnid>/<file>``, e.g. RobustBench's
  ``imagenet_test_image_ids.txt``) or the first ``imagenet_per_class`` files of each class in sorted
  file-name order (5 per class gives 5,000 images, but *not* RobustBench's list). Decoded batch by
  batch (``ImageFiles``).

Settings (``setting``), following the continual TTA benchmark of the RMT authors
(mariodoebler/test-time-adaptation, ``test_time.py`` and ``datasets/data_loading.py``):

- ``continual``: the corruptions in order (default: the standard 15) at ``severity``; the
  strategy is reset only before the first domain.
- ``reset_each_shift``: the same stream, the strategy is reset before every experience.
- ``gradual``: every domain runs severities 1,2,3,4,5,4,3,2,1 (9 experiences per corruption,
  15 x 9 = 135 for the standard list), as in the benchmark. The second visit of a severity is
  named ``<corruption>/<severity> #2`` so that every evaluation keeps its own error (the mean
  error is then the benchmark's mean over all evaluations).
- ``gradual_cotta``: CoTTA's original protocol (qinenergy/cotta ``cifar10c_gradual.py``): the first
  domain runs 5,4,3,2,1 and every later domain 1,2,3,4,5,4,3,2,1 (5 + 14 x 9 = 131 experiences).
- ``mixed_domains``: all domains concatenated and shuffled into one experience; each sample keeps
  its domain in ``TensorData.g``, so the error is still reported per domain.
- ``correlated`` (or any setting with the suffix ``_correlated``): within each experience the
  samples are sorted by label; with ``delta_dirichlet > 0`` they are ordered by the Dirichlet
  scheme of NOTE (Gong et al., NeurIPS 2022) used by the benchmark: C chunks, each class's samples
  split over the chunks with proportions ~ Dir(delta), a chunk receives nothing more once it holds
  N/C samples, resampled until every chunk holds >= ``dirichlet_min_chunk`` samples; the chunks
  follow each other, and within a chunk the classes come in a random order.

Label shift (``label_shift``): the class counts of each experience follow a prior instead of the
test set's (balanced) one; the kept samples of class k are its first n_k in the shuffled order,
with n_max the smallest class count of the test set:

- ``uniform``: n_k = n_max for every class (balanced);
- ``long_tailed``: n_k = max(1, floor(n_max * imbalance_ratio ** (-r_k / (K - 1)))), r_k the rank of
  class k: class k itself (``label_order=fixed``, class 0 the most frequent, as CIFAR-10-LT) or a
  seeded random order drawn per experience (``label_order=per_domain``);
- ``dirichlet``: a prior p ~ Dir(``label_concentration``) drawn per experience (seeded), and
  n_k = floor(n_max * p_k / max p), so the most likely class keeps n_max samples.
With ``mixed_domains`` each domain is subsampled by its own prior before the domains are mixed.

Sources of the images: ``scenarios.corruption_sources``.

Order of operations in each experience (as the benchmark): seeded shuffle (``shuffle``; the same
seed for every domain, so every domain gets the same permutation), then the label-shift subsample
(if any), then the first ``n_examples`` (-1: all; under label shift a seeded random ``n_examples``
of the kept samples, in stream order, so that a short stream still follows the prior), then the
correlated ordering. In ``mixed_domains`` this is applied once to the
concatenated stream. Note: with ``gradual`` + ``reset_each_shift`` our runner resets at every
severity change; the benchmark resets only when the corruption changes.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.errors import ConfigError, did_you_mean
from cl.registry import SCENARIOS
from scenarios.corruption_sources import input_shape_of, open_source
from scenarios.datasets import ImageFiles, load_dataset

# The 15 benchmark corruptions in the standard order (same tuple as scenarios.corruptions.CORRUPTIONS,
# repeated here so the config default does not import the corruption code).
STANDARD_ORDER = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                  "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                  "jpeg_compression"]
LABEL_SHIFTS = ("none", "uniform", "long_tailed", "dirichlet")
LABEL_ORDERS = ("fixed", "per_domain")
SETTINGS = ("continual", "reset_each_shift", "gradual", "gradual_cotta", "mixed_domains", "correlated")
FORMATS = ("generate", "cifar10_c", "cifar100_c", "imagenet_c")
GRADUAL = [1, 2, 3, 4, 5, 4, 3, 2, 1]  # benchmark test_time.py, for a single configured severity
GRADUAL_COTTA_FIRST = [5, 4, 3, 2, 1]  # CoTTA cifar10c_gradual.py: first domain only


@dataclass
class CorruptionStreamConfig(ScenarioConfig):
    name: str = "corruption_stream"
    data_format: str = "generate"     # generate | cifar10_c | cifar100_c | imagenet_c
    dataset: str = "cifar10"          # clean dataset adapter: its test split is corrupted (generate), its train split is the source
    root: str = "data"                # root of the clean dataset
    download: bool = False
    corrupted_root: str = "data/CIFAR-10-C"  # folder of the official corrupted files (cifar10_c, cifar100_c, imagenet_c)
    corruptions: List[str] = field(default_factory=lambda: list(STANDARD_ORDER))
    severity: int = 5                 # 1..5 (gradual settings ignore it)
    setting: str = "continual"        # continual | reset_each_shift | gradual | gradual_cotta | mixed_domains | correlated (+ _correlated)
    delta_dirichlet: float = 0.0      # correlated: 0 sorts by label; > 0 Dirichlet ordering (benchmark TEST.DELTA_DIRICHLET)
    dirichlet_min_chunk: int = 10     # minimum samples per Dirichlet chunk (benchmark: 10)
    shuffle: bool = True              # seeded shuffle of each domain (benchmark: yes; CoTTA's original: no)
    n_examples: int = -1              # samples per experience (mixed: in total); -1: all
    imagenet_per_class: int = 0       # imagenet_c: first N files per class (0: all, or imagenet_list)
    imagenet_list: Optional[str] = None  # imagenet_c: file of '<wnid>/<file>' lines selecting the images
    resize: int = 0                   # imagenet_c: shorter side resized to this (0: as stored)
    crop: int = 0                     # imagenet_c: centre crop size (0: none)
    corruption_seed: int = 0          # generate: seed of the corruption noise (fixed data, like the official files)
    params: Optional[str] = None      # generate: corruption parameter table cifar | imagenet (None: by image size)
    frost_dir: Optional[str] = None   # generate: folder with the frost overlay images
    cache_dir: Optional[str] = None   # generate: keep each corrupted test set as <dataset>-<corruption>-<severity>-seed<k>-streams<v>.npy here
    label_shift: str = "none"         # none | uniform | long_tailed | dirichlet: class counts per experience (see above)
    imbalance_ratio: float = 10.0     # long_tailed: count of the most / the least frequent class
    label_order: str = "fixed"        # long_tailed: fixed (class 0 most frequent) | per_domain (seeded order per experience)
    label_concentration: float = 1.0  # dirichlet: concentration of the per-experience class prior
    with_source: bool = False         # attach the clean train split as labelled source data (e.g. RMT)
    source_samples: int = -1          # size of a seeded random subset of the source (-1: all)


def parse_setting(setting):
    """'mixed_domains_correlated' -> ('mixed_domains', True); validates the name."""
    correlated = setting == "correlated" or setting.endswith("_correlated")
    base = "continual" if setting == "correlated" else setting[: -len("_correlated")] if correlated else setting
    if base not in SETTINGS or base == "correlated":
        raise ConfigError(f"Unknown scenario.setting '{setting}'{did_you_mean(setting, SETTINGS)}. Choose one of "
                          f"{', '.join(SETTINGS)}, optionally with the suffix _correlated.")
    return base, correlated


def severity_schedule(setting, corruptions, severity):
    """[(corruption, severity)] of the experiences, in stream order."""
    if setting == "gradual":
        return [(c, s) for c in corruptions for s in GRADUAL]
    if setting == "gradual_cotta":
        return [(c, s) for i, c in enumerate(corruptions) for s in (GRADUAL_COTTA_FIRST if i == 0 else GRADUAL)]
    return [(c, severity) for c in corruptions]


def validate(cfg):
    """ConfigError for an impossible stream, before any data is read."""
    from scenarios.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS
    known = list(CORRUPTIONS) + list(EXTRA_CORRUPTIONS)
    if cfg.data_format not in FORMATS:
        raise ConfigError(f"Unknown scenario.data_format '{cfg.data_format}'{did_you_mean(cfg.data_format, FORMATS)}; "
                          f"choose one of {', '.join(FORMATS)}.")
    if not cfg.corruptions:
        raise ConfigError("scenario.corruptions is empty; list at least one corruption.")
    for c in cfg.corruptions:
        if c not in known:
            raise ConfigError(f"Unknown corruption '{c}'{did_you_mean(c, known)}. Known: {', '.join(known)}.")
    if not (isinstance(cfg.severity, int) and 1 <= cfg.severity <= 5):
        raise ConfigError(f"scenario.severity must be an integer in 1..5, got {cfg.severity}.")
    if cfg.delta_dirichlet < 0:
        raise ConfigError(f"scenario.delta_dirichlet must be >= 0, got {cfg.delta_dirichlet}.")
    if cfg.n_examples == 0 or cfg.n_examples < -1:
        raise ConfigError(f"scenario.n_examples must be -1 (all) or > 0, got {cfg.n_examples}.")
    if cfg.label_shift not in LABEL_SHIFTS:
        raise ConfigError(f"Unknown scenario.label_shift '{cfg.label_shift}'{did_you_mean(cfg.label_shift, LABEL_SHIFTS)}; "
                          f"choose one of {', '.join(LABEL_SHIFTS)}.")
    if cfg.label_order not in LABEL_ORDERS:
        raise ConfigError(f"Unknown scenario.label_order '{cfg.label_order}'; choose one of {', '.join(LABEL_ORDERS)}.")
    if cfg.imbalance_ratio < 1:
        raise ConfigError(f"scenario.imbalance_ratio must be >= 1 (most / least frequent class), got {cfg.imbalance_ratio}.")
    if cfg.label_concentration <= 0:
        raise ConfigError(f"scenario.label_concentration must be > 0, got {cfg.label_concentration}.")
    return parse_setting(cfg.setting)


# ---------------------------------------------------------------------------- orderings
def dirichlet_order(y, delta, num_classes, rng, min_chunk=10, max_tries=1000):
    """Indices of ``y`` in a temporally correlated order (Dirichlet label shift, concentration ``delta``).

    Our implementation of the scheme the RMT benchmark takes from NOTE (see the module docstring).
    Every index appears exactly once. ``rng``: a numpy Generator.
    """
    y = np.asarray(y)
    n, k_chunks = len(y), num_classes
    for _ in range(max_tries):
        parts = [[np.zeros(0, dtype=np.int64)] * num_classes for _ in range(k_chunks)]
        sizes = np.zeros(k_chunks)
        for c in range(num_classes):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(k_chunks, float(delta)))
            p = p * (sizes < n / k_chunks)                      # balance: full chunks take no more
            p = p / p.sum() if p.sum() > 0 else np.full(k_chunks, 1.0 / k_chunks)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for j, part in enumerate(np.split(idx, cuts)):
                parts[j][c] = part
                sizes[j] += len(part)
        if sizes.min() >= min_chunk:
            break
    else:
        raise ConfigError(f"Could not order {n} samples into {k_chunks} Dirichlet chunks of at least {min_chunk} "
                          f"samples with delta={delta}; raise scenario.delta_dirichlet or lower "
                          "scenario.dirichlet_min_chunk.")
    order = [parts[j][c] for j in range(k_chunks) for c in rng.permutation(num_classes)]
    return torch.from_numpy(np.concatenate(order).astype(np.int64))


def class_counts(available, cfg, seed):
    """Samples to keep per class under ``cfg.label_shift`` (see the module docstring), given the
    ``available`` count of each class; ``seed`` draws the per-experience order or prior."""
    k, n_max = len(available), int(min(available))
    if cfg.label_shift == "uniform":
        return [n_max] * k
    if cfg.label_shift == "long_tailed":
        rank = torch.arange(k) if cfg.label_order == "fixed" else \
            torch.argsort(torch.randperm(k, generator=torch.Generator().manual_seed(seed)))
        return [max(1, int(n_max * cfg.imbalance_ratio ** (-float(rank[c]) / max(k - 1, 1)))) for c in range(k)]
    p = np.random.default_rng(seed).dirichlet(np.full(k, float(cfg.label_concentration)))
    return [int(n_max * p[c] / p.max()) for c in range(k)]


def label_shift_keep(y, counts):
    """Boolean mask over ``y`` (in stream order): the first ``counts[k]`` samples of each class k."""
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c, n in enumerate(counts):
        keep[torch.nonzero(y == c).flatten()[:n]] = True
    return keep


def stream_order(y, cfg, correlated, seed, num_classes, domain=0, n_domains=1):
    """Index order of one experience: seeded shuffle -> label-shift subsample -> first n_examples ->
    correlated ordering. ``y`` may be ``n_domains`` copies of one domain's labels (mixed stream);
    ``domain`` (the experience index) seeds the label-shift draw."""
    n = len(y)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if cfg.shuffle else torch.arange(n)
    if getattr(cfg, "label_shift", "none") != "none":
        per = n // n_domains
        keep = torch.zeros(n, dtype=torch.bool)
        for d in range(n_domains):
            part = idx[(idx >= d * per) & (idx < (d + 1) * per)]
            counts = class_counts(torch.bincount(y[:per], minlength=num_classes).tolist(), cfg,
                                  seed + 7919 * (domain + d + 1))
            keep[part[label_shift_keep(y[part], counts)]] = True
        idx = idx[keep[idx]]
        if 0 < cfg.n_examples < len(idx):
            # a seeded random n_examples of the kept samples (in stream order): the first ones would be the
            # first shuffled images, all kept whenever n_examples is small next to the class counts
            pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + 104729 * (domain + 1)))
            idx = idx[pick[: cfg.n_examples].sort().values]
    if cfg.n_examples > 0:
        idx = idx[: cfg.n_examples]
    if correlated:
        if cfg.delta_dirichlet > 0:
            rng = np.random.default_rng(seed)
            idx = idx[dirichlet_order(y[idx].numpy(), cfg.delta_dirichlet, num_classes, rng, cfg.dirichlet_min_chunk)]
        else:
            idx = idx[torch.sort(y[idx], stable=True).indices]
    return idx


# ---------------------------------------------------------------------------- the scenario
@SCENARIOS.register("corruption_stream", config=CorruptionStreamConfig)
def corruption_stream(cfg, seed=0):
    """Corruption sequence for continual TTA (continual, gradual, mixed, correlated, Dirichlet); online protocol."""
    setting, correlated = validate(cfg)
    src = open_source(cfg, seed)
    schedule = severity_schedule(setting, list(cfg.corruptions), cfg.severity)
    classes = list(range(src.num_classes))
    if setting == "mixed_domains":
        domains = [f"{c}/{s}" for c, s in schedule]
        n = len(src.labels)
        all_y = src.labels.repeat(len(schedule))
        order = stream_order(all_y, cfg, correlated, seed, src.num_classes, n_domains=len(schedule))
        parts = []
        dom_of, idx_of = order // n, order % n
        for d, (c, s) in enumerate(schedule):
            pos = torch.nonzero(dom_of == d).flatten()
            data = src.images(c, s, idx_of[pos])
            parts.append((pos, data, d))
        data = _interleave(parts, len(order))
        exps = [Experience(index=0, train=None, test=data, classes=classes, domain="mixed")]
    else:
        order = stream_order(src.labels, cfg, correlated, seed, src.num_classes) if cfg.label_shift == "none" else None
        cache, exps, seen = {}, [], {}
        for i, (c, s) in enumerate(schedule):
            if cfg.label_shift != "none":                   # every experience its own class counts
                test = src.images(c, s, stream_order(src.labels, cfg, correlated, seed, src.num_classes, domain=i))
            else:
                if (c, s) not in cache:
                    cache[(c, s)] = src.images(c, s, order)
                test = cache[(c, s)]
            seen[(c, s)] = seen.get((c, s), 0) + 1          # gradual: a severity's second visit is 'c/s #2'
            name = f"{c}/{s}" + (f" #{seen[(c, s)]}" if seen[(c, s)] > 1 else "")
            exps.append(Experience(index=i, train=None, test=test, classes=classes, domain=name))
        domains = [e.domain for e in exps]
    source = None
    if cfg.with_source:
        source, _, _ = load_dataset(cfg.dataset, root=cfg.root, download=cfg.download, seed=seed)
        if cfg.source_samples > 0:
            g = torch.Generator().manual_seed(seed + 13)
            source = source.subset(torch.randperm(len(source), generator=g)[: cfg.source_samples].sort().values)
    return Scenario(name=f"corruption_stream/{cfg.data_format}/{setting}{'_correlated' if correlated else ''}",
                    experiences=exps, num_classes=src.num_classes, input_shape=input_shape_of(exps[0].test),
                    protocol="online", domains=domains, source=source,
                    reset_each_shift=setting == "reset_each_shift")


def _interleave(parts, n):
    """One stream from per-domain pieces placed at positions ``pos``; g = domain index."""
    g = torch.empty(n, dtype=torch.long)
    y = torch.empty(n, dtype=torch.long)
    for pos, data, d in parts:
        g[pos], y[pos] = d, data.y
    if any(isinstance(data, ImageFiles) for _, data, _ in parts):
        paths = [None] * n
        for pos, data, _ in parts:
            for p, path in zip(pos.tolist(), data.paths):
                paths[p] = path
        first = parts[0][1]
        return ImageFiles(paths, y, g, resize=first.resize, crop=first.crop)
    x = torch.empty((n,) + tuple(parts[0][1].x.shape[1:]), dtype=parts[0][1].x.dtype)
    for pos, data, _ in parts:
        x[pos] = data.x
    return TensorData(x, y, g)
