"""Leave-one-domain-out domain generalization (the DomainBed protocol ITTA is evaluated with).

One domain is held out (``test_domain``): the labelled source is the union of all the other
domains (each sample's group id ``g`` = the index of its domain among the source domains, so a
strategy can draw one minibatch per domain), and the online stream is the held-out domain, one
experience. The full protocol runs once per domain and averages (``benchmarks/itta_dg.py``, or
``cl sweep`` over ``scenario.test_domain``).

Where the domains come from (``domains_from``):

- ``folders``: ``ROOT/<domain>/<class>/*.jpg`` (DomainBed's ``MultipleEnvironmentImageFolder``
  layout). ``preset`` names the domains and the class count and checks them:
    ``pacs``: art_painting, cartoon, photo, sketch; 7 classes (DomainBed ``PACS``: ROOT = .../PACS);
    ``vlcs``: Caltech101, LabelMe, SUN09, VOC2007; 5 classes (``VLCS``);
    ``office_home``: Art, Clipart, Product, Real World; 65 classes (``OfficeHome``: .../office_home);
  or no preset: every sub-folder is a domain (``domains`` picks and orders them). Images are
  resized to ``image_size`` x ``image_size`` (shorter side, then a centred crop; DomainBed resizes
  both sides to 224 without keeping the aspect ratio).
- ``corruptions`` (offline stand-in): one domain per corruption of ``corruptions`` at
  ``severity``, applied to a disjoint seeded slice of ``n_per_domain`` images of ``dataset``'s test
  split (our re-implementation of the CIFAR-10-C generator; on the CIFAR-10 JPEG copy of ../shared).
- ``rotated`` (offline stand-in, DomainBed's RotatedMNIST): one domain per angle of ``angles``,
  every image of a disjoint seeded slice of ``n_per_domain`` images of ``dataset``'s training split
  rotated by it (Fashion-MNIST, MNIST, or the synthetic images in tests).
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.errors import ConfigError, DataError
from cl.registry import SCENARIOS
from scenarios.datasets import decode_images, folder_samples, load_dataset, missing

PRESETS = {
    "pacs": (["art_painting", "cartoon", "photo", "sketch"], 7),
    "vlcs": (["Caltech101", "LabelMe", "SUN09", "VOC2007"], 5),
    "office_home": (["Art", "Clipart", "Product", "Real World"], 65),
}
SOURCES = ("folders", "corruptions", "rotated")


@dataclass
class LeaveOneDomainOutConfig(ScenarioConfig):
    name: str = "leave_one_domain_out"
    domains_from: str = "folders"     # folders | corruptions | rotated
    test_domain: str = ""             # the held-out domain: its name or its index in the domain list
    root: str = "data/PACS"           # folders: the dataset folder; corruptions/rotated: the clean dataset's root
    preset: str = ""                  # folders: pacs | vlcs | office_home ('' = every sub-folder is a domain)
    domains: List[str] = field(default_factory=list)  # folders: domain order (empty: the preset's, or all sorted)
    image_size: int = 224             # folders: DomainBed's 224
    max_per_domain: int = -1          # folders: seeded cap on images per domain (-1: all)
    dataset: str = "cifar10"          # corruptions / rotated: the clean dataset adapter
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the dataset adapter
    download: bool = False
    corruptions: List[str] = field(default_factory=lambda: ["gaussian_noise", "defocus_blur", "snow", "contrast"])
    severity: int = 5
    angles: List[float] = field(default_factory=lambda: [0.0, 15.0, 30.0, 45.0, 60.0, 75.0])  # DomainBed RotatedMNIST
    n_per_domain: int = 1000          # corruptions / rotated: images per domain (disjoint slices)
    split_seed: int = 0


def folder_domains(cfg):
    """[(domain, TensorData)] and the class names of a ROOT/<domain>/<class>/ dataset."""
    root = cfg.root
    if not os.path.isdir(root):
        raise missing(cfg.preset or "leave_one_domain_out", root, "Set scenario.root to the folder holding one "
                      "sub-folder per domain (DomainBed layout: e.g. data/PACS/art_painting/dog/*.jpg; download with "
                      "DomainBed's domainbed/scripts/download.py).")
    if cfg.preset and cfg.preset not in PRESETS:
        raise ConfigError(f"scenario.preset must be one of {', '.join(PRESETS)} or empty, got '{cfg.preset}'.")
    expected, n_classes = PRESETS.get(cfg.preset, (None, None))
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    domains = list(cfg.domains) or expected or found
    absent = [d for d in domains if d not in found]
    if absent:
        raise DataError(f"Domain folder(s) {absent} missing under '{os.path.abspath(root)}' (found {found}). "
                        f"{'The ' + cfg.preset + ' preset expects ' + str(expected) + '. ' if expected else ''}"
                        "Point scenario.root at the dataset folder itself, or set scenario.domains.")
    classes = sorted({e.name for d in domains for e in os.scandir(os.path.join(root, d)) if e.is_dir()})
    if n_classes is not None and len(classes) != n_classes:
        raise DataError(f"{cfg.preset} has {n_classes} classes, but the domain folders under '{os.path.abspath(root)}' "
                        f"hold {len(classes)} class folders ({classes[:8]}...). Check scenario.root and the preset.")
    g = torch.Generator().manual_seed(cfg.split_seed)
    out = []
    for d in domains:
        paths, labels, _ = folder_samples(os.path.join(root, d), classes)
        if not paths:
            raise DataError(f"Domain folder '{os.path.join(root, d)}' holds no images.")
        idx = torch.randperm(len(paths), generator=g)
        if cfg.max_per_domain > 0:
            idx = idx[: cfg.max_per_domain]
        idx = idx.sort().values.tolist()
        out.append((d, TensorData(decode_images([paths[i] for i in idx], cfg.image_size, cfg.image_size),
                                  torch.tensor([labels[i] for i in idx]))))
    return out, classes


def slices(n_total, n_domains, n_per_domain, seed):
    """Disjoint seeded index slices, one per domain."""
    if n_per_domain * n_domains > n_total:
        raise ConfigError(f"scenario.n_per_domain={n_per_domain} x {n_domains} domains needs {n_per_domain * n_domains} "
                          f"images, but the split has {n_total}. Lower scenario.n_per_domain.")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return [perm[i * n_per_domain:(i + 1) * n_per_domain].sort().values for i in range(n_domains)]


def corruption_domains(cfg, seed):
    from scenarios.corruption_stream import CorruptionStreamConfig
    from scenarios.corruption_sources import open_source
    if not cfg.corruptions:
        raise ConfigError("scenario.corruptions is empty; name two or more corruptions (one domain each).")
    src = open_source(CorruptionStreamConfig(dataset=cfg.dataset, root=cfg.root, download=cfg.download,
                                             corruptions=list(cfg.corruptions), severity=cfg.severity), seed)
    parts = slices(len(src.labels), len(cfg.corruptions), cfg.n_per_domain, cfg.split_seed)
    out = []
    for c, idx in zip(cfg.corruptions, parts):
        data = src.images(c, cfg.severity, idx)
        out.append((f"{c}/{cfg.severity}", TensorData(data.x, data.y)))
    return out, [str(k) for k in range(src.num_classes)]


def rotated_domains(cfg, seed):
    from scenarios.domain_stream import rotate
    train, _, info = load_dataset(cfg.dataset, root=cfg.root, download=cfg.download, seed=seed, **cfg.dataset_args)
    if train.x.ndim != 4:
        raise ConfigError(f"Dataset '{cfg.dataset}' is not images [N, C, H, W]; rotated domains need images.")
    parts = slices(len(train), len(cfg.angles), cfg.n_per_domain, cfg.split_seed)
    out = [(f"rot{a:g}", rotate(train.subset(idx), a)) for a, idx in zip(cfg.angles, parts)]
    return out, [str(k) for k in range(info["num_classes"])]


def held_out_index(test_domain, names):
    if test_domain == "" or test_domain is None:
        raise ConfigError(f"scenario.test_domain is required: the held-out domain, one of {names} (or its index).")
    t = str(test_domain)
    if t in names:
        return names.index(t)
    if t.lstrip("-").isdigit() and -len(names) <= int(t) < len(names):
        return int(t) % len(names)
    raise ConfigError(f"scenario.test_domain '{t}' is not one of the domains {names} nor an index 0..{len(names) - 1}.")


def split(domains, test_domain):
    """(source TensorData with g = source-domain index, held-out (name, TensorData), source names)."""
    names = [d for d, _ in domains]
    k = held_out_index(test_domain, names)
    train = [(d, data) for i, (d, data) in enumerate(domains) if i != k]
    if not train:
        raise ConfigError("leave_one_domain_out needs at least two domains (one held out, one to train on).")
    x = torch.cat([data.x for _, data in train])
    y = torch.cat([data.y for _, data in train])
    g = torch.cat([torch.full((len(data),), i, dtype=torch.long) for i, (_, data) in enumerate(train)])
    return TensorData(x, y, g), domains[k], [d for d, _ in train]


@SCENARIOS.register("leave_one_domain_out", config=LeaveOneDomainOutConfig)
def leave_one_domain_out(cfg, seed=0):
    """Train on all domains but one (labelled source), test online on the held-out domain (DomainBed DG)."""
    if cfg.domains_from not in SOURCES:
        raise ConfigError(f"scenario.domains_from must be one of {', '.join(SOURCES)}, got '{cfg.domains_from}'.")
    if cfg.domains_from == "folders":
        domains, classes = folder_domains(cfg)
    elif cfg.domains_from == "corruptions":
        domains, classes = corruption_domains(cfg, seed)
    else:
        domains, classes = rotated_domains(cfg, seed)
    source, (name, test), train_names = split(domains, cfg.test_domain)
    exp = Experience(index=0, train=None, test=test, classes=list(range(len(classes))), task_id=0, domain=name)
    return Scenario(name=f"leave_one_domain_out/{cfg.preset or cfg.domains_from}/test={name}/train={'+'.join(train_names)}",
                    experiences=[exp], num_classes=len(classes), input_shape=tuple(test.x.shape[1:]),
                    protocol="online", source=source, class_order=list(range(len(classes))),
                    class_names=list(classes) if cfg.domains_from == "folders" else [])
