"""Dataset adapters on small files written here in the official formats, and missing-data errors."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from cl.errors import ConfigError, DataError
from scenarios.datasets import ImageFiles, load_dataset, read_idx

RNG = np.random.default_rng(0)


def write_png(path, arr):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


# ---------------------------------------------------------------------------- CIFAR pickles
def write_cifar10(root, n=6):
    base = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(base)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n)]   # the official files hold Python ints
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches.append((data, labels))
    with open(os.path.join(base, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return batches


def test_cifar10_pickles(tmp_path):
    batches = write_cifar10(str(tmp_path))
    train, test, info = load_dataset("cifar10", root=str(tmp_path))
    assert train.x.shape == (30, 3, 32, 32) and train.x.dtype == torch.uint8 and test.x.shape == (6, 3, 32, 32)
    # row layout of the official files: 1024 red, then green, then blue values, row-major
    assert torch.equal(train.x[7], torch.from_numpy(batches[1][0][1].reshape(3, 32, 32)))
    assert train.y[7] == batches[1][1][1] and test.y.tolist() == [int(v) for v in batches[5][1]]
    assert info["class_names"][3] == "c3" and info["num_classes"] == 10


def test_cifar100_pickles(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name, n in (("train", 8), ("test", 4)):
        with open(base / name, "wb") as f:
            pickle.dump({b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f)
    train, test, info = load_dataset("cifar100", root=str(tmp_path))
    assert len(train) == 8 and train.y.tolist() == list(range(8)) and info["num_classes"] == 100


# ---------------------------------------------------------------------------- MNIST idx
def write_idx(path, arr, gz=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def write_mnist(folder, n_train=12, n_test=5, gz=False):
    os.makedirs(folder, exist_ok=True)
    xtr = RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    for stem, a in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                    ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        write_idx(os.path.join(folder, stem + ext), a, gz)
    return xtr, ytr


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    xtr, ytr = write_mnist(str(tmp_path / "MNIST" / "raw"), gz=gz)
    train, test, info = load_dataset("mnist", root=str(tmp_path))
    assert train.x.shape == (12, 1, 28, 28) and len(test) == 5
    assert torch.equal(train.x[3, 0], torch.from_numpy(xtr[3])) and train.y.tolist() == ytr.tolist()


def test_fashion_mnist_idx(tmp_path):
    write_mnist(str(tmp_path / "FashionMNIST" / "raw"))
    train, _, info = load_dataset("fashion_mnist", root=str(tmp_path))
    assert len(train) == 12 and info["class_names"][9] == "Ankle boot"


def test_read_idx_rejects_other_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="IDX"):
        read_idx(str(p))


# ---------------------------------------------------------------------------- SVHN, image folder, npz
def test_svhn_mat(tmp_path):
    from scipy.io import savemat
    for split, n in (("train", 6), ("test", 3)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4], [5]][:n])})
        if split == "train":
            first = x[:, :, :, 0]
    train, test, _ = load_dataset("svhn", root=str(tmp_path))
    assert train.x.shape == (6, 3, 32, 32) and train.y.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(train.x[0], torch.from_numpy(first).permute(2, 0, 1))


def test_imagefolder_pngs(tmp_path):
    imgs = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                a = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                write_png(str(tmp_path / split / cls / f"{i}.png"), a)
                imgs[(split, cls, i)] = a
    train, test, info = load_dataset("imagefolder", root=str(tmp_path))
    assert info["class_names"] == ["cat", "dog"] and train.x.shape == (6, 3, 10, 12)
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(train.x[4], torch.from_numpy(imgs[("train", "dog", 1)]).permute(2, 0, 1))  # PNG is lossless


def test_npz_nhwc(tmp_path):
    x = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 2, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    train, test, info = load_dataset("npz", root=str(tmp_path / "d.npz"))
    assert train.x.shape == (4, 3, 8, 8) and info["num_classes"] == 3
    assert torch.equal(train.x[1], torch.from_numpy(x[1]).permute(2, 0, 1))


def test_image_files_decode_in_batches(tmp_path):
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        write_png(paths[-1], np.full((20, 30, 3), i * 40, dtype=np.uint8))
    data = ImageFiles(paths, [0, 1, 2, 3, 4], resize=10, crop=10)
    batches = list(data.batches(2))
    assert [len(b.y) for b in batches] == [2, 2, 1] and batches[0].x.shape == (2, 3, 10, 10)
    assert abs(float(batches[1].x[1].mean()) - 120 / 255) < 1e-6
    sub = data.subset([4, 0])
    assert sub.y.tolist() == [4, 0] and sub.x.shape == (2, 3, 10, 10)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder", "npz"])
def test_missing_dataset_names_path_and_fix(tmp_path, name):
    root = str(tmp_path / "nowhere")
    with pytest.raises(DataError) as e:
        load_dataset(name, root=root)
    msg = str(e.value)
    assert os.path.abspath(root) in msg and ("download" in msg or "scenario.root" in msg)


def test_unknown_dataset_suggests_name():
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        load_dataset("cifar01")


def test_image_files_prefetch_next_batch_and_same_content(tmp_path, monkeypatch):
    """The next batch is decoded while the current one is in use, and the shuffled batches are
    exactly the decoded images in the generator's order."""
    import threading
    import scenarios.image_files as ds
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        write_png(paths[-1], np.full((8, 8, 3), i * 40, dtype=np.uint8))
    data = ImageFiles(paths, list(range(6)))
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    got = list(data.batches(2, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert torch.cat([b.y for b in got]).tolist() == order.tolist()
    assert [round(float(b.x[0, 0, 0, 0]) * 255) for b in got] == [40 * int(order[k]) for k in (0, 2, 4)]

    decoded = []
    second = threading.Event()
    real = ds.decode_images

    def spy(batch_paths, resize=0, crop=0, workers=4):
        decoded.append(batch_paths)
        if len(decoded) == 2:
            second.set()
        return real(batch_paths, resize, crop, workers)

    monkeypatch.setattr(ds, "decode_images", spy)
    it = data.batches(2)
    next(it)                                   # batch 0 handed out, not yet asked for batch 1
    assert second.wait(5), "batch 1 was not decoded ahead"
    assert decoded[1] == paths[2:4]
    assert len(list(it)) == 2
