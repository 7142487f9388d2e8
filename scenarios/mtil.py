"""MTIL: multi-domain task-incremental learning (ZSCL, Zheng et al., "Preventing Zero-Shot Transfer
Degradation in Continual Learning of Vision-Language Models", ICCV 2023; code Thunderbeee/ZSCL, mtil/).

Each experience is one dataset with its own classes (labels are offset so every dataset has its own
range; ``Experience.classes`` is that range and ``task_key`` the dataset name), so the runner's
task-IL accuracy is MTIL's per-dataset accuracy and the summary's ``task_il_transfer`` /
``task_il_average_all_entries`` / ``task_il_last`` are ZSCL's Transfer / Avg. / Last (Table 1/3).
The scenario gives the model every class name and, per class, its dataset's prompt templates.

Datasets are read in their official on-disk formats under ``root`` (``roots.<name>`` overrides one):
torchvision's dataset classes for the file collections, the platform's CIFAR pickle / MNIST IDX
readers for the array ones. Splits, class names and templates follow ZSCL's
``mtil/src/datasets/collections.py``: official train/test splits, except Caltech101, EuroSAT and
SUN397 which ZSCL cuts 80/20 with ``random_split`` seeded 42 (reproduced exactly; SUN397's file list
is sorted first, which ZSCL's unsorted ``rglob`` does not guarantee). Images are decoded at
``image_size`` (shorter side resized, centre crop; ZSCL's eval transform) and the training data gets
ZSCL's ``RandomResizedCrop(scale=(0.9, 1.0))`` (mtil/clip/clip.py ``_transform(is_train=True)``) as a
batch op on the decoded image.

``order: I`` is ZSCL's alphabetical order (scripts/ZSCL.sh); ``order: II`` the second order
(scripts/ZSCL_minus.sh). ``train_samples_per_task`` fixes the samples per task: ZSCL trains 1,000
iterations of batch 64 per task (``--iterations 1000``) = 64,000 (the training set repeated in
fresh seeded permutations).

Offline stand-in datasets (not MTIL; results are not comparable to the paper): ``cifar10_jpeg`` (the
CIFAR-10 JPEG copy in ``ROOT/train|test/<class>/``), ``fashion_mnist`` (IDX files), ``digits``
(scikit-learn's 8x8 digits, bundled) and ``synthetic`` (the platform's generated prototypes; smoke runs).
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario, TensorData
from cl.errors import ConfigError, DataError
from cl.registry import SCENARIOS
from scenarios.datasets import load_dataset
from scenarios.image_files import ImageFiles

ORDERS = {
    # scripts/ZSCL.sh, lwf.sh, WiSE_finetune.sh (Order I, alphabetical)
    "I": ["aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist", "oxford_pet",
          "stanford_cars", "sun397"],
    # scripts/ZSCL_minus.sh (Order II)
    "II": ["stanford_cars", "food", "mnist", "oxford_pet", "flowers", "sun397", "aircraft", "caltech101", "dtd",
           "eurosat", "cifar100"],
}

# Prompt templates per dataset: ZSCL mtil/src/datasets/collections.py and cifar10.py (they are the
# templates of CLIP's prompt-engineering notes, Radford et al. 2021).
_A_THE = ["a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
          "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.",
          "a {} in a video game.", "a plushie {}.", "a origami {}.", "art of a {}.", "graffiti of a {}.",
          "a drawing of a {}.", "a doodle of a {}."]
_CIFAR = [f"a {q}photo of {a} {s}{{}}." for a in ("a", "the") for q, s in
          [("", ""), ("blurry ", ""), ("black and white ", ""), ("low contrast ", ""), ("high contrast ", ""),
           ("bad ", ""), ("good ", ""), ("", "small "), ("", "big ")]]
TEMPLATES = {
    "aircraft": ["a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."],
    "caltech101": _A_THE + [t.replace(" a {}", " the {}").replace("a plastic", "the plastic")
                            .replace("a toy", "the toy").replace("a embroidered", "the embroidered")
                            .replace("a cartoon", "the cartoon").replace("a {} in", "the {} in")
                            .replace("a plushie", "the plushie").replace("a origami", "the origami")
                            for t in _A_THE],
    "cifar100": _CIFAR,
    "dtd": [f"a photo of {a} {{}} {k}." for a in ("a", "the") for k in ("texture", "pattern", "thing", "object")],
    "eurosat": ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."],
    "flowers": ["a photo of a {}, a type of flower."],
    "food": ["a photo of a {}, a type of food."],
    "mnist": ['a photo of the number: "{}".'],
    "oxford_pet": ["a photo of a {}, a type of pet."],
    "stanford_cars": ["a photo of a {}, a type of car.", "a photo of a {}.", "a photo of the {}.", "a photo of my {}.",
                      "i love my {}!", "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
                      "a photo of my old {}."],
    "sun397": ["a photo of a {}.", "a photo of the {}."],
    # stand-ins (not MTIL)
    "cifar10_jpeg": _CIFAR,
    "fashion_mnist": ["a photo of a {}."],
    "digits": ['a photo of the number: "{}".'],
    "synthetic": ["a photo of a {}."],
}

# Class names ZSCL replaces (collections.py; CLIP's prompt-engineering names), in torchvision's label order.
EUROSAT_NAMES = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
                 "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                 "residential buildings or homes or apartments", "river", "lake or sea"]
CALTECH101_NAMES = [
    "off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant", "barrel",
    "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera", "cannon",
    "side of a car", "ceiling fan", "cellphone", "chair", "chandelier", "body of a cougar cat", "face of a cougar cat",
    "crab", "crayfish", "crocodile", "head of a  crocodile", "cup", "dalmatian", "dollar bill", "dolphin", "dragonfly",
    "electric guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo", "head of a flamingo", "garfield",
    "gerenuk", "gramophone", "grand piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis",
    "inline skate", "joshua tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin",
    "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon", "pizza",
    "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors", "scorpion",
    "sea horse", "snoopy (cartoon beagle)", "soccer ball", "stapler", "starfish", "stegosaurus", "stop sign",
    "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch", "water lilly", "wheelchair", "wild cat",
    "windsor chair", "wrench", "yin and yang symbol"]


@dataclass
class MTILConfig(ScenarioConfig):
    name: str = "mtil"
    order: str = "I"                  # I | II: ZSCL's task orders (ignored when `datasets` is set)
    datasets: Optional[List[str]] = None  # explicit task list (MTIL names or the stand-ins)
    root: str = "data"                # folder holding every dataset in its official layout (ZSCL --data-location)
    roots: Dict[str, str] = field(default_factory=dict)  # per-dataset root overrides
    download: bool = False            # let torchvision download missing sets (needs internet; not StanfordCars)
    image_size: int = 224             # decode size (CLIP ViT-B/16: 224)
    train_samples_per_task: int = 0   # 0: one pass over each training set; ZSCL: 1000 it x 64 = 64000
    augment: bool = True              # ZSCL's RandomResizedCrop(scale=(0.9, 1.0)) on training images
    train_fraction: float = 1.0       # seeded fraction of each training set (quick runs)
    test_fraction: float = 1.0        # seeded fraction of each test set (quick runs)


# ---------------------------------------------------------------------------- loaders
def _underscores(names):
    """ZSCL ``process_labels``: underscores to spaces."""
    return [str(n).replace("_", " ") for n in names]


def _random_80_20(n):
    """ZSCL ``split_dataset``: torch random_split(ratio 0.8) with Generator().manual_seed(42)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(42))
    k = int(0.8 * n)
    return perm[:k], perm[k:]


def _tv(cls_name, root, download, **kw):
    import torchvision.datasets as tvd
    try:
        return getattr(tvd, cls_name)(root, download=download, **kw)
    except RuntimeError as e:      # torchvision: "Dataset not found ..."
        raise DataError(f"{cls_name} not found under '{os.path.abspath(root)}' ({e}). Put it there in torchvision's "
                        f"layout (see torchvision.datasets.{cls_name}), set scenario.roots.<name> to its folder, or "
                        "pass scenario.download=true on a machine with internet.") from None


def _files(paths, labels):
    return [str(p) for p in paths], list(labels)


def _official(cls_name, train_split, test_split, paths_attr, split_key="split"):
    def load(root, download):
        out = []
        for split in (train_split, test_split):
            ds = _tv(cls_name, root, download, **{split_key: split})
            out.append(_files(getattr(ds, paths_attr), ds._labels))
        return out[0], out[1], _underscores(ds.classes)
    return load


def _aircraft(root, download):
    return _official("FGVCAircraft", "train", "test", "_image_files")(root, download)


def _dtd(root, download):
    return _official("DTD", "train", "test", "_image_files")(root, download)


def _food(root, download):
    return _official("Food101", "train", "test", "_image_files")(root, download)


def _oxford_pet(root, download):
    return _official("OxfordIIITPet", "trainval", "test", "_images")(root, download)


def _flowers(root, download):
    train, test, _ = _official("Flowers102", "train", "test", "_image_files")(root, download)
    from torchvision.datasets import Flowers102
    return train, test, [n.rstrip("?") for n in Flowers102.classes]   # ZSCL: 'pink-yellow dahlia'


def _stanford_cars(root, download):
    out = []
    for split in ("train", "test"):
        ds = _tv("StanfordCars", root, False, split=split)
        out.append(_files([p for p, _ in ds._samples], [y for _, y in ds._samples]))
    return out[0], out[1], _underscores(ds.classes)


def _split_80_20(paths, labels):
    tr, te = _random_80_20(len(paths))
    return _files([paths[i] for i in tr], [labels[i] for i in tr]), _files([paths[i] for i in te], [labels[i] for i in te])


def _caltech101(root, download):
    ds = _tv("Caltech101", root, download)
    paths = [os.path.join(ds.root, "101_ObjectCategories", ds.categories[y], f"image_{i:04d}.jpg")
             for i, y in zip(ds.index, ds.y)]
    if len(ds.categories) != len(CALTECH101_NAMES):
        raise DataError(f"Caltech101 under '{root}' has {len(ds.categories)} categories, expected 101.")
    return (*_split_80_20(paths, ds.y), list(CALTECH101_NAMES))


def _eurosat(root, download):
    ds = _tv("EuroSAT", root, download)
    if len(ds.classes) != len(EUROSAT_NAMES):
        raise DataError(f"EuroSAT under '{root}' has {len(ds.classes)} classes, expected 10.")
    return (*_split_80_20([p for p, _ in ds.samples], [y for _, y in ds.samples]), list(EUROSAT_NAMES))


def _sun397(root, download):
    ds = _tv("SUN397", root, download)
    pairs = sorted(zip(map(str, ds._image_files), ds._labels))
    return (*_split_80_20([p for p, _ in pairs], [y for _, y in pairs]), _underscores(ds.classes))


def _arrays(name, names=None):
    """A platform adapter (CIFAR pickles, MNIST IDX, ...) read into memory."""
    def load(root, download):
        train, test, info = load_dataset(name, root=root, download=download)
        return train, test, list(names) if names is not None else _underscores(info["class_names"])
    return load


def _mnist_names():
    from torchvision.datasets import MNIST
    return MNIST.classes          # '0 - zero', ... (ZSCL uses torchvision's MNIST.classes)


LOADERS: Dict[str, Callable] = {
    "aircraft": _aircraft, "caltech101": _caltech101, "cifar100": _arrays("cifar100"), "dtd": _dtd,
    "eurosat": _eurosat, "flowers": _flowers, "food": _food, "mnist": lambda r, d: _arrays("mnist", _mnist_names())(r, d),
    "oxford_pet": _oxford_pet, "stanford_cars": _stanford_cars, "sun397": _sun397,
    "cifar10_jpeg": _arrays("imagefolder"), "fashion_mnist": _arrays("fashion_mnist"),
    "digits": lambda r, d: _arrays("digits", _mnist_names())(r, d),
    "synthetic": _arrays("synthetic"),
}


# ---------------------------------------------------------------------------- batch transforms
def to_rgb_size(size):
    """Batch op: grey -> RGB, then bicubic resize to ``size`` (array datasets: CIFAR 32px, MNIST 28px)."""
    def apply(x, generator=None):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return x
    return apply


def random_resized_crop(scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """Batch op: torchvision ``RandomResizedCrop`` per sample (area fraction in ``scale``, log-uniform
    aspect ratio in ``ratio``; whole image if no draw fits in 10 tries), resized back (bicubic)."""
    def apply(x, generator=None):
        n, _, h, w = x.shape
        out = torch.empty_like(x)
        for i in range(n):
            top, left, ch, cw = 0, 0, h, w
            for _ in range(10):
                area = h * w * float(torch.empty(1).uniform_(*scale, generator=generator))
                logr = torch.empty(1).uniform_(*[float(torch.tensor(r).log()) for r in ratio], generator=generator)
                ar = float(logr.exp())
                tw, th = int(round((area * ar) ** 0.5)), int(round((area / ar) ** 0.5))
                if 0 < tw <= w and 0 < th <= h:
                    top = int(torch.randint(0, h - th + 1, (1,), generator=generator))
                    left = int(torch.randint(0, w - tw + 1, (1,), generator=generator))
                    ch, cw = th, tw
                    break
            crop = x[i:i + 1, :, top:top + ch, left:left + cw]
            out[i:i + 1] = F.interpolate(crop, size=(h, w), mode="bicubic", align_corners=False).clamp_(0, 1)
        return out
    return apply


def _chain(*fns):
    fns = [f for f in fns if f is not None]
    if not fns:
        return None
    return lambda x, generator=None: _apply_all(fns, x, generator)


def _apply_all(fns, x, generator):
    for f in fns:
        x = f(x, generator)
    return x


# ---------------------------------------------------------------------------- the scenario
def _as_data(part, size, offset, augment):
    """(paths, labels) or TensorData -> TensorData/ImageFiles at ``size`` with labels + ``offset``."""
    crop = random_resized_crop() if augment else None
    if isinstance(part, TensorData):
        return TensorData(part.x, part.y + offset, None, _chain(to_rgb_size(size), crop))
    paths, labels = part
    if not paths:
        raise DataError("A dataset split holds no images; check the dataset folder.")
    return ImageFiles(paths, torch.as_tensor(labels, dtype=torch.long) + offset, resize=size, crop=size, transform=crop)


def _fraction(data, fraction, seed, what):
    if not 0 < fraction <= 1:
        raise ConfigError(f"scenario.{what} must be in (0, 1], got {fraction}.")
    if fraction == 1:
        return data
    n = max(1, int(len(data) * fraction))
    return data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values)


def repeat_to(data, n, seed):
    """``n`` samples: the data in fresh seeded permutations, one after another, cut at ``n``."""
    g = torch.Generator().manual_seed(seed)
    parts, have = [], 0
    while have < n:
        parts.append(torch.randperm(len(data), generator=g))
        have += len(data)
    return data.subset(torch.cat(parts)[:n])


def task_list(cfg):
    """The dataset names of the stream, validated."""
    if cfg.datasets:
        names = [str(n) for n in cfg.datasets]
    elif str(cfg.order) in ORDERS:
        names = ORDERS[str(cfg.order)]
    else:
        raise ConfigError(f"scenario.order must be one of {', '.join(ORDERS)} (ZSCL's two MTIL orders), got "
                          f"'{cfg.order}'; or list the tasks in scenario.datasets.")
    unknown = [n for n in names if n not in LOADERS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"scenario.datasets: unknown or repeated {unknown or names}. Known: {', '.join(LOADERS)}.")
    return names


@SCENARIOS.register("mtil", config=MTILConfig)
def mtil(cfg, seed=0):
    """Multi-domain task-incremental learning: one dataset per experience, each with its own classes."""
    names = task_list(cfg)
    if cfg.image_size < 1 or cfg.train_samples_per_task < 0:
        raise ConfigError("scenario.image_size must be >= 1 and scenario.train_samples_per_task >= 0.")
    exps, class_names, class_templates, offset = [], [], [], 0
    for i, name in enumerate(names):
        root = cfg.roots.get(name, cfg.root)
        train, test, classes = LOADERS[name](root, cfg.download)
        tr = _as_data(train, cfg.image_size, offset, cfg.augment)
        te = _as_data(test, cfg.image_size, offset, False)
        tr = _fraction(tr, cfg.train_fraction, seed + i, "train_fraction")
        te = _fraction(te, cfg.test_fraction, seed + 1000 + i, "test_fraction")
        if cfg.train_samples_per_task:
            tr = repeat_to(tr, cfg.train_samples_per_task, seed + 2000 + i)
        ids = list(range(offset, offset + len(classes)))
        exps.append(Experience(index=i, train=tr, test=te, classes=ids, task_id=i, domain=name, task_key=name))
        class_names += list(classes)
        class_templates += [list(TEMPLATES[name])] * len(classes)
        offset += len(classes)
    return Scenario(name=f"mtil/{cfg.order if not cfg.datasets else '+'.join(names)}", experiences=exps,
                    num_classes=offset, input_shape=(3, cfg.image_size, cfg.image_size),
                    class_order=list(range(offset)), class_names=class_names, class_templates=class_templates)
