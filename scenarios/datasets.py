"""Dataset adapters: each returns ``(train, test, info)`` as in-memory TensorData.

Small datasets are decoded once into uint8 tensors [N, C, H, W]; ``info`` holds ``num_classes``
and ``class_names``. The official on-disk formats are read directly (CIFAR python pickles, MNIST
idx files, SVHN .mat files, image folders, .npz), so no checksum or network access is needed;
torchvision is only used to download when ``scenario.download=true``. Datasets that are not on
disk raise a DataError naming where they were looked for and how to get them.

Large image collections (ImageNet-C, DomainNet) are held as ``ImageFiles``: paths and labels,
decoded batch by batch.
"""
import gzip
import os
import pickle

import numpy as np
import torch

from cl.data import TensorData
from cl.errors import ConfigError, DataError
from cl.registry import DATASETS
from scenarios.image_files import ImageFiles, decode_image, decode_images, folder_samples, list_images  # noqa: F401


def dataset(name):
    return DATASETS.register(name)


def load_dataset(name, root="data", download=False, seed=0, **args):
    """(train TensorData, test TensorData, info dict) for a named dataset; ``args`` go to its adapter."""
    adapter = DATASETS.get(name)
    try:
        return adapter(root=root, download=download, seed=seed, **args)
    except TypeError as e:
        if not args:
            raise
        raise ConfigError(f"Bad scenario.dataset_args {args} for dataset '{name}': {e}") from None


def _info(names):
    names = [str(n) for n in names]
    return {"num_classes": len(names), "class_names": names}


def missing(name, path, how):
    """The DataError for a dataset that is not on disk: where we looked and how to get it."""
    return DataError(f"Dataset '{name}' not found: looked in '{os.path.abspath(path)}'. {how}")


_HOW = ("Pass scenario.download=true on a machine with internet (torchvision downloads it into "
        "scenario.root), or set scenario.root to the folder that holds it.")


# ---------------------------------------------------------------------------- built-in / synthetic
@dataset("digits")
def digits(root=None, download=False, seed=0, test_fraction=0.3):
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no download needed)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # fixed split
    n_test = int(len(y) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return TensorData(x[tr], y[tr]), TensorData(x[te], y[te]), _info(range(10))


@dataset("synthetic")
def synthetic(root=None, download=False, seed=0, num_classes=10, n_train=100, n_test=50, shape=(3, 8, 8)):
    """Gaussian class prototypes plus noise, as uint8 images: a tiny stand-in for tests and smoke runs."""
    g = torch.Generator().manual_seed(seed + 99)
    protos = torch.rand(num_classes, *shape, generator=g)

    def draw(n):
        y = torch.arange(num_classes).repeat_interleave(n)
        x = (protos[y] + 0.15 * torch.randn(len(y), *shape, generator=g)).clamp(0, 1)
        return TensorData((x * 255).round().to(torch.uint8), y)

    return draw(n_train), draw(n_test), _info(range(num_classes))


# ---------------------------------------------------------------------------- CIFAR pickles
class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR python files hold: dicts, lists, strings and numbers
    (pickle's own opcodes, no import) and numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``),
    plus numpy scalars (``scalar``: a number from its bytes, found in copies whose labels were
    re-saved by numpy). Each of these only builds data. Any other global, e.g. ``os.system`` in a
    crafted file, is refused before it is looked up, so no code runs."""
    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def _unpickle(path):
    """A CIFAR python pickle, read with ``_CifarUnpickler``; a DataError when the file is not one
    (truncated, another format, or holding anything but plain data and numpy arrays)."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror}. Check the file's permissions.") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"{path} is not a CIFAR python pickle that is safe to load ({e}): the official files hold "
                        "only dicts, lists and numpy arrays. Replace it with the official file (or "
                        "scenario.download=true).") from None
    except Exception as e:  # EOFError, ValueError, ... from a truncated or foreign file
        raise DataError(f"{path} is not a readable CIFAR python pickle ({type(e).__name__}: {e}); it may be "
                        "truncated. Replace it with the official file (or scenario.download=true).") from None


def _cifar_part(path, label_key):
    d = _unpickle(path)
    try:
        x = torch.from_numpy(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        y = torch.as_tensor(d[label_key], dtype=torch.long)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"{path} does not hold CIFAR data ({type(e).__name__}: {e}); it needs b'data' "
                        f"[N, 3072] uint8 and {label_key!r}. Replace it with the official file.") from None
    if len(x) != len(y):
        raise DataError(f"{path} holds {len(x)} images but {len(y)} labels. Replace it with the official file.")
    return TensorData(x, y)


def _cifar(name, root, download, folder, train_files, test_file, meta_file, label_key, names_key, tv_cls):
    base = os.path.join(root, folder)
    needed = [os.path.join(base, f) for f in train_files + [test_file]]
    if not all(os.path.isfile(p) for p in needed) and download:
        import torchvision
        getattr(torchvision.datasets, tv_cls)(root, download=True)
    if not all(os.path.isfile(p) for p in needed):
        raise missing(name, base, f"Expected the python version ({', '.join(train_files[:1])}, ..., {test_file}). "
                      + _HOW)
    parts = [_cifar_part(p, label_key) for p in needed[:-1]]
    train = TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    test = _cifar_part(needed[-1], label_key)
    meta = os.path.join(base, meta_file)
    if os.path.isfile(meta):
        d = _unpickle(meta)
        if not isinstance(d, dict) or not isinstance(d.get(names_key), list):
            raise DataError(f"{meta} does not hold the class names ({names_key!r}). Replace it with the official "
                            "file, or delete it to name the classes by number.")
        names = [n.decode() if isinstance(n, bytes) else n for n in d[names_key]]
    else:
        names = range(int(max(train.y.max(), test.y.max())) + 1)
    return train, test, _info(names)


@dataset("cifar10")
def cifar10(root="data", download=False, seed=0):
    """CIFAR-10, python version: ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    return _cifar("cifar10", root, download, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", "batches.meta", b"labels", b"label_names", "CIFAR10")


@dataset("cifar100")
def cifar100(root="data", download=False, seed=0):
    """CIFAR-100 (fine labels), python version: ROOT/cifar-100-python/{train, test, meta}."""
    return _cifar("cifar100", root, download, "cifar-100-python", ["train"], "test", "meta", b"fine_labels",
                  b"fine_label_names", "CIFAR100")


# ---------------------------------------------------------------------------- MNIST idx files
def read_idx(path):
    """An IDX file (optionally .gz) as a numpy array (big-endian header as in LeCun's format)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"Cannot read {path}: {type(e).__name__}: {e}. Replace it with the official file.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"{path} is not an IDX file (unknown data type 0x{data[2]:02x}).")
    dtype, ndim = dtypes[data[2]], data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) - (4 + 4 * ndim) != expected:
        raise DataError(f"{path} is truncated or damaged: its header announces {shape} ({expected} bytes of data), "
                        f"the file holds {max(0, len(data) - 4 - 4 * ndim)}. Replace it with the official file.")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder, stem):
    for f in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, f)):
            return os.path.join(folder, f)
    return None


# Offline copies installed by system packages, read when scenario.root is left at its default and
# the files are not under it (an explicit root is never silently swapped for another copy).
DEFAULT_ROOT = "data"
SYSTEM_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}   # Debian: dataset-fashion-mnist
_SYSTEM_HOW = {"fashion_mnist": " Offline on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` installs it in "
                                "/usr/share/datasets/fashion-mnist, read when scenario.root is left at 'data'."}


def _mnist_like(name, root, download, folder, tv_cls, names):
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    candidates = [os.path.join(root, folder, "raw"), os.path.join(root, folder), root]
    if root == DEFAULT_ROOT:
        candidates += SYSTEM_DIRS.get(name, [])

    def locate():
        for c in candidates:
            paths = [_find_idx(c, s) for s in stems]
            if all(paths):
                return paths
        return None

    paths = locate()
    if paths is None and download:
        import torchvision
        getattr(torchvision.datasets, tv_cls)(root, download=True)
        paths = locate()
    if paths is None:
        raise missing(name, candidates[0], f"Expected the IDX files {', '.join(stems)} (or .gz). " + _HOW
                      + _SYSTEM_HOW.get(name, ""))
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)

    def td(x, y):
        return TensorData(torch.from_numpy(x.copy()).to(torch.uint8).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return td(xtr, ytr), td(xte, yte), _info(names)


@dataset("mnist")
def mnist(root="data", download=False, seed=0):
    """MNIST IDX files under ROOT/MNIST/raw (torchvision's layout), ROOT/MNIST or ROOT."""
    return _mnist_like("mnist", root, download, "MNIST", "MNIST", range(10))


@dataset("fashion_mnist")
def fashion_mnist(root="data", download=False, seed=0):
    """Fashion-MNIST IDX files under ROOT/FashionMNIST/raw, ROOT/FashionMNIST or ROOT; with the default
    root, also Debian's /usr/share/datasets/fashion-mnist (``apt-get install dataset-fashion-mnist``)."""
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return _mnist_like("fashion_mnist", root, download, "FashionMNIST", "FashionMNIST", names)


# ---------------------------------------------------------------------------- SVHN .mat
@dataset("svhn")
def svhn(root="data", download=False, seed=0):
    """SVHN cropped digits: ROOT/train_32x32.mat and ROOT/test_32x32.mat (label 10 means digit 0)."""
    paths = [os.path.join(root, f"{s}_32x32.mat") for s in ("train", "test")]
    if not all(os.path.isfile(p) for p in paths) and download:
        import torchvision
        for split in ("train", "test"):
            torchvision.datasets.SVHN(root, split=split, download=True)
    if not all(os.path.isfile(p) for p in paths):
        raise missing("svhn", root, "Expected train_32x32.mat and test_32x32.mat. " + _HOW)
    from scipy.io import loadmat
    out = []
    for p in paths:
        m = loadmat(p)
        x = torch.from_numpy(np.ascontiguousarray(np.transpose(m["X"], (3, 2, 0, 1)))).to(torch.uint8)
        y = torch.from_numpy(m["y"].astype(np.int64).reshape(-1) % 10)
        out.append(TensorData(x, y))
    return out[0], out[1], _info(range(10))


@dataset("imagefolder")
def imagefolder(root="data", download=False, seed=0):
    """ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (same-size images), decoded once to uint8."""
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise missing("imagefolder", os.path.join(root, split),
                          "Expected ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg; set scenario.root.")
    out = []
    paths, labels, classes = folder_samples(os.path.join(root, "train"))
    out.append(TensorData(decode_images(paths), torch.tensor(labels)))
    paths, labels, _ = folder_samples(os.path.join(root, "test"), classes)
    out.append(TensorData(decode_images(paths), torch.tensor(labels)))
    return out[0], out[1], _info(classes)


# ---------------------------------------------------------------------------- npy / npz
def load_npy(path, mmap_mode=None):
    """A .npy array (no pickled objects: ``allow_pickle=False``); a DataError naming the file when it
    is truncated, empty or not a .npy file."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}. Check that it is a readable .npy file.") from None
    except Exception as e:  # noqa: BLE001 - ValueError (bad header, truncated, pickled objects), EOFError ...
        raise DataError(f"{path} is not a readable .npy array ({type(e).__name__}: {e}); it may be truncated. "
                        "Replace it with the official file.") from None


def images_tensor(a):
    """numpy images (NHWC or NCHW, or features) -> tensor, channels first for images."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    return t


@dataset("npz")
def npz(root="data", download=False, seed=0):
    """ROOT is an .npz with x_train, y_train, x_test, y_test (uint8 NHWC/NCHW images or float features)."""
    if not os.path.isfile(root):
        raise missing("npz", root, "Set scenario.root to an .npz file with x_train, y_train, x_test, y_test.")
    try:
        with np.load(root) as f:
            if not hasattr(f, "files"):
                raise DataError(f"{root} holds a single array, not an .npz archive; it needs x_train, y_train, "
                                "x_test, y_test (np.savez).")
            absent = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if absent:
                raise DataError(f"{root} lacks arrays {absent}; it needs x_train, y_train, x_test, y_test.")
            parts = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"Cannot read {root}: {e.strerror or e}.") from None
    except Exception as e:  # noqa: BLE001 - EOFError, ValueError, BadZipFile, pickled objects refused ...
        raise DataError(f"{root} is not a readable .npz archive ({type(e).__name__}: {e}); it may be truncated. "
                        "Write it with np.savez(x_train=..., y_train=..., x_test=..., y_test=...).") from None
    if len(parts["y_train"]) == 0 or len(parts["y_test"]) == 0:
        raise DataError(f"{root} holds an empty dataset (train {len(parts['y_train'])}, test "
                        f"{len(parts['y_test'])} samples); both splits need samples.")
    n_classes = int(max(parts["y_train"].max(), parts["y_test"].max())) + 1
    return (TensorData(images_tensor(parts["x_train"]), torch.from_numpy(parts["y_train"]).long()),
            TensorData(images_tensor(parts["x_test"]), torch.from_numpy(parts["y_test"]).long()),
            _info(range(n_classes)))
