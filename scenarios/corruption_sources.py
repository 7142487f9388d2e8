"""Where the corrupted images of a corruption stream come from: official files or generated.

Each source has ``labels`` (the clean labels, the same in every domain), ``num_classes`` and
``images(corruption, severity, index) -> TensorData`` (or ImageFiles) holding the images
``index`` of that domain in that order. Formats are described in ``scenarios.corruption_stream``.
"""
import os

import numpy as np
import torch

from cl.data import TensorData
from cl.errors import ConfigError, DataError
from scenarios.datasets import ImageFiles, decode_image, list_images, load_dataset, load_npy, missing


class CifarC:
    """CIFAR-10-C / CIFAR-100-C files: ``<corruption>.npy`` (5 severities stacked) + ``labels.npy``."""

    def __init__(self, folder, name):
        self.folder, self.name = folder, name
        labels = os.path.join(folder, "labels.npy")
        if not os.path.isfile(labels):
            raise missing(name, folder, f"Expected <corruption>.npy files and labels.npy from {name.upper()} "
                          "(https://zenodo.org/record/2535967 for CIFAR-10-C, /record/3555552 for CIFAR-100-C); "
                          "set scenario.corrupted_root to the extracted folder.")
        all_labels = load_npy(labels)
        self.per_severity = len(all_labels) // 5
        self.labels = torch.from_numpy(all_labels[: self.per_severity].astype(np.int64))
        self.num_classes = 10 if name == "cifar10_c" else 100

    def images(self, corruption, severity, index):
        path = os.path.join(self.folder, f"{corruption}.npy")
        if not os.path.isfile(path):
            raise missing(self.name, path, f"The file {corruption}.npy is missing from scenario.corrupted_root.")
        arr = load_npy(path, mmap_mode="r")
        if len(arr) != 5 * self.per_severity:
            raise DataError(f"{path} holds {len(arr)} images; expected 5 severities x {self.per_severity} "
                            "(the length of labels.npy / 5).")
        rows = (severity - 1) * self.per_severity + index.numpy()
        x = torch.from_numpy(np.ascontiguousarray(arr[np.sort(rows)]))
        x = x[torch.from_numpy(np.argsort(np.argsort(rows)))]          # back to the requested order
        return TensorData(x.permute(0, 3, 1, 2).contiguous(), self.labels[index])


class ImageNetC:
    """ImageNet-C folders ``<corruption>/<severity>/<wnid>/*.JPEG``; the same file list for every domain."""

    def __init__(self, cfg):
        self.folder, self.resize, self.crop = cfg.corrupted_root, cfg.resize, cfg.crop
        first = os.path.join(self.folder, cfg.corruptions[0], str(cfg.severity if "gradual" not in cfg.setting else 1))
        if not os.path.isdir(first):
            raise missing("imagenet_c", first, "Expected <corruption>/<severity>/<wnid>/*.JPEG from ImageNet-C "
                          "(https://zenodo.org/record/2235448); set scenario.corrupted_root to its folder.")
        self.wnids = sorted(e.name for e in os.scandir(first) if e.is_dir())
        self.num_classes = len(self.wnids)
        cls = {w: i for i, w in enumerate(self.wnids)}
        if cfg.imagenet_list:
            if not os.path.isfile(cfg.imagenet_list):
                raise missing("imagenet_c list", cfg.imagenet_list, "Set scenario.imagenet_list to a text file of "
                              "'<wnid>/<file>' lines (e.g. RobustBench's imagenet_test_image_ids.txt) or null.")
            with open(cfg.imagenet_list) as f:
                self.files = [ln.strip() for ln in f if ln.strip()]
        else:
            self.files = []
            for w in self.wnids:
                names = [os.path.basename(p) for p in list_images(os.path.join(first, w))]
                if cfg.imagenet_per_class > 0:
                    names = names[: cfg.imagenet_per_class]
                self.files += [f"{w}/{n}" for n in names]
        unknown = sorted({f.split("/")[0] for f in self.files} - set(cls))
        if unknown:
            raise DataError(f"The ImageNet-C image list names classes not found in {first}: {unknown[:5]}.")
        self.labels = torch.tensor([cls[f.split("/")[0]] for f in self.files], dtype=torch.long)

    def images(self, corruption, severity, index):
        base = os.path.join(self.folder, corruption, str(severity))
        if not os.path.isdir(base):
            raise missing("imagenet_c", base, "This corruption/severity folder is missing from scenario.corrupted_root.")
        paths = [os.path.join(base, self.files[i]) for i in index.tolist()]
        return ImageFiles(paths, self.labels[index], resize=self.resize, crop=self.crop)


class Generated:
    """Corruptions applied to a clean test set with ``scenarios.corruptions.corrupt``."""

    def __init__(self, cfg, seed):
        _, test, info = load_dataset(cfg.dataset, root=cfg.root, download=cfg.download, seed=seed)
        x = test.x
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ConfigError(f"Dataset '{cfg.dataset}' is not uint8 images [N, C, H, W]; corruptions need images.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()   # grayscale -> RGB for the corruption code
        self.x, self.labels, self.num_classes = x, test.y, info["num_classes"]
        self.cfg = cfg

    def images(self, corruption, severity, index):
        from scenarios.corruptions import STREAM_VERSION, corrupt
        c = self.cfg
        if not c.cache_dir:
            xs = corrupt(self.x[index], corruption, severity, seed=c.corruption_seed, params=c.params,
                         frost_dir=c.frost_dir, indices=index.tolist())
            return TensorData(xs, self.labels[index])
        path = os.path.join(c.cache_dir, f"{c.dataset}-{corruption}-{severity}-seed{c.corruption_seed}"
                            f"-streams{STREAM_VERSION}.npy")     # version: files of older streams are not reused
        if os.path.isfile(path):
            full = load_npy(path, mmap_mode="r")
            if full.shape != tuple(self.x.shape):
                raise DataError(f"Cached corruption {path} has shape {full.shape}, not {tuple(self.x.shape)}; "
                                "delete it (the clean dataset changed).")
        else:                                   # the whole test set, so any subset/order can reuse it
            full = corrupt(self.x, corruption, severity, seed=c.corruption_seed, params=c.params,
                           frost_dir=c.frost_dir).numpy()
            os.makedirs(c.cache_dir, exist_ok=True)
            np.save(path + ".tmp.npy", full)
            os.replace(path + ".tmp.npy", path)
        return TensorData(torch.from_numpy(np.ascontiguousarray(full[index.numpy()])), self.labels[index])


def open_source(cfg, seed):
    if cfg.data_format in ("cifar10_c", "cifar100_c"):
        return CifarC(cfg.corrupted_root, cfg.data_format)
    if cfg.data_format == "imagenet_c":
        return ImageNetC(cfg)
    return Generated(cfg, seed)


def input_shape_of(data):
    if isinstance(data, ImageFiles):
        a = decode_image(data.paths[0], data.resize, data.crop)
        return (a.shape[2], a.shape[0], a.shape[1])
    return tuple(data.x.shape[1:])
