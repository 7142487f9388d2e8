"""MNIST / Fashion-MNIST IDX files: the Debian package layout (/usr/share/datasets/fashion-mnist,
gz) as the offline default when scenario.root is left at 'data'; tests write their own files."""
import gzip
import os

import numpy as np
import pytest
import torch

import scenarios.datasets as ds
from cl.errors import DataError
from scenarios.datasets import load_dataset, read_idx

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_set(folder, n_train=6, n_test=4, gz=True, offset=0):
    """Four IDX files with image i filled with (i + offset) and label i % 10."""
    os.makedirs(folder, exist_ok=True)
    arrays = (np.stack([np.full((28, 28), i + offset) for i in range(n_train)]), np.arange(n_train) % 10,
              np.stack([np.full((28, 28), 100 + i) for i in range(n_test)]), np.arange(n_test) % 10)
    for stem, a in zip(STEMS, arrays):
        write_idx(os.path.join(folder, stem + (".gz" if gz else "")), a, gz)


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    """A stand-in for /usr/share/datasets/fashion-mnist, and a working directory without data/."""
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setitem(ds.SYSTEM_DIRS, "fashion_mnist", [str(folder)])
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_default_root_reads_the_debian_layout(system_dir, gz):
    write_set(str(system_dir), gz=gz)
    train, test, info = load_dataset("fashion_mnist")            # root left at its default, 'data'
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == torch.uint8 and len(test) == 4
    assert train.x[5, 0, 3, 3] == 5 and test.x[2, 0, 0, 0] == 102 and train.y.tolist() == [0, 1, 2, 3, 4, 5]
    assert info["class_names"][0] == "T-shirt/top"


def test_files_under_root_come_first(system_dir, tmp_path):
    write_set(str(system_dir), offset=0)
    write_set(str(tmp_path / "data" / "FashionMNIST" / "raw"), offset=50)
    train, _, _ = load_dataset("fashion_mnist")
    assert train.x[0, 0, 0, 0] == 50


def test_an_explicit_root_is_not_swapped_for_the_system_copy(system_dir, tmp_path):
    write_set(str(system_dir))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=str(tmp_path / "elsewhere"))


def test_read_idx_gz_and_plain_agree(tmp_path):
    a = np.arange(24).reshape(2, 3, 4)
    write_idx(str(tmp_path / "a.gz"), a, gz=True)
    write_idx(str(tmp_path / "a"), a, gz=False)
    assert np.array_equal(read_idx(str(tmp_path / "a.gz")), a) and np.array_equal(read_idx(str(tmp_path / "a")), a)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    train, test, _ = load_dataset("fashion_mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
