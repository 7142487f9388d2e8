"""MTIL scenario (scenarios/mtil.py) on tiny fake copies of the 11 datasets in their official on-disk
layouts (read by torchvision's dataset classes / the platform's CIFAR and MNIST readers)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cl.errors import ConfigError, DataError
from scenarios.mtil import (ORDERS, MTILConfig, TEMPLATES, _random_80_20, mtil, random_resized_crop,
                            repeat_to)


def jpg(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.full((10, 12, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with open(path, "wb") as f:
        f.write(header + arr.tobytes())


def make_fake_mtil(root):
    """Two images per split (or per class) in each dataset's official layout; returns {name: n_classes}."""
    from scipy.io import savemat
    r = str(root)
    # FGVC Aircraft
    base = f"{r}/fgvc-aircraft-2013b/data"
    os.makedirs(base, exist_ok=True)
    open(f"{base}/variants.txt", "w").write("707-320\nA300B4\n")
    for split, ids in (("train", ["001", "002"]), ("test", ["003", "004"])):
        open(f"{base}/images_variant_{split}.txt", "w").write(f"{ids[0]} 707-320\n{ids[1]} A300B4\n")
        for i in ids:
            jpg(f"{base}/images/{i}.jpg")
    # Caltech101: 101 categories + background
    for c in ["BACKGROUND_Google"] + [f"cat{i:03d}" for i in range(101)]:
        jpg(f"{r}/caltech101/101_ObjectCategories/{c}/image_0001.jpg")
    # CIFAR-100 python pickles
    os.makedirs(f"{r}/cifar-100-python", exist_ok=True)
    for split in ("train", "test"):
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1, 2]},
                    open(f"{r}/cifar-100-python/{split}", "wb"))
    pickle.dump({b"fine_label_names": [b"apple", b"aquarium_fish", b"baby"]}, open(f"{r}/cifar-100-python/meta", "wb"))
    # DTD
    os.makedirs(f"{r}/dtd/dtd/labels", exist_ok=True)
    for split, i in (("train", 1), ("test", 2)):
        open(f"{r}/dtd/dtd/labels/{split}1.txt", "w").write(f"banded/banded_{i}.jpg\nzigzagged/zigzagged_{i}.jpg\n")
        jpg(f"{r}/dtd/dtd/images/banded/banded_{i}.jpg")
        jpg(f"{r}/dtd/dtd/images/zigzagged/zigzagged_{i}.jpg")
    # EuroSAT: 10 class folders, 3 images each
    for c in ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
              "Residential", "River", "SeaLake"]:
        for i in range(3):
            jpg(f"{r}/eurosat/2750/{c}/{c}_{i}.jpg")
    # Flowers-102 (.mat label and split files)
    for i in range(1, 5):
        jpg(f"{r}/flowers-102/jpg/image_{i:05d}.jpg")
    savemat(f"{r}/flowers-102/imagelabels.mat", {"labels": np.array([[1, 2, 1, 2]])})
    savemat(f"{r}/flowers-102/setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]),
                                           "tstid": np.array([[3, 4]])})
    # Food-101
    os.makedirs(f"{r}/food-101/meta", exist_ok=True)
    for split, i in (("train", 1), ("test", 2)):
        json.dump({"apple_pie": [f"apple_pie/{i}"], "baby_back_ribs": [f"baby_back_ribs/{i}"]},
                  open(f"{r}/food-101/meta/{split}.json", "w"))
        jpg(f"{r}/food-101/images/apple_pie/{i}.jpg")
        jpg(f"{r}/food-101/images/baby_back_ribs/{i}.jpg")
    # MNIST IDX
    os.makedirs(f"{r}/MNIST/raw", exist_ok=True)
    for pre in ("train", "t10k"):
        idx(f"{r}/MNIST/raw/{pre}-images-idx3-ubyte", np.zeros((2, 28, 28)))
        idx(f"{r}/MNIST/raw/{pre}-labels-idx1-ubyte", [3, 7])
    # Oxford-IIIT Pet
    os.makedirs(f"{r}/oxford-iiit-pet/annotations", exist_ok=True)
    for split, i in (("trainval", 1), ("test", 2)):
        open(f"{r}/oxford-iiit-pet/annotations/{split}.txt", "w").write(
            f"Abyssinian_{i} 1 1 1\nbeagle_{i} 2 2 1\n")
        jpg(f"{r}/oxford-iiit-pet/images/Abyssinian_{i}.jpg")
        jpg(f"{r}/oxford-iiit-pet/images/beagle_{i}.jpg")
    # Stanford Cars (devkit .mat files)
    cars = f"{r}/stanford_cars"
    os.makedirs(f"{cars}/devkit", exist_ok=True)
    savemat(f"{cars}/devkit/cars_meta.mat", {"class_names": np.array([["AM General Hummer SUV 2000"], ["Acura RL Sedan 2012"]],
                                                                      dtype=object).T})
    for split, mat in (("train", f"{cars}/devkit/cars_train_annos.mat"), ("test", f"{cars}/cars_test_annos_withlabels.mat")):
        ann = np.zeros((1, 2), dtype=[("fname", "O"), ("class", "O")])
        ann[0, 0] = (f"{split}1.jpg", 1)
        ann[0, 1] = (f"{split}2.jpg", 2)
        savemat(mat, {"annotations": ann})
        jpg(f"{cars}/cars_{split}/{split}1.jpg")
        jpg(f"{cars}/cars_{split}/{split}2.jpg")
    # SUN397
    os.makedirs(f"{r}/SUN397", exist_ok=True)
    open(f"{r}/SUN397/ClassName.txt", "w").write("/a/abbey\n/b/bus_interior\n")
    for c in ("a/abbey", "b/bus_interior"):
        for i in range(3):
            jpg(f"{r}/SUN397/{c}/sun_{c[-3:]}{i}.jpg")
    return {"aircraft": 2, "caltech101": 101, "cifar100": 3, "dtd": 2, "eurosat": 10, "flowers": 102, "food": 2,
            "mnist": 10, "oxford_pet": 2, "stanford_cars": 2, "sun397": 2}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtil")
    return root, make_fake_mtil(root)


@pytest.fixture
def no_md5(monkeypatch):
    """Flowers102 checks the MD5 of its .mat files; the fakes cannot match it."""
    import torchvision.datasets.flowers102 as fl
    monkeypatch.setattr(fl, "check_integrity", lambda *a, **k: True)


def test_order_I_reads_every_official_layout_with_zscl_names_templates_and_splits(fake_root, no_md5):
    root, n_classes = fake_root
    sc = mtil(MTILConfig(root=str(root), image_size=8), seed=0)
    names = [e.domain for e in sc.experiences]
    assert names == ORDERS["I"] and [e.task_key for e in sc.experiences] == names
    assert sc.num_classes == sum(n_classes.values()) == len(sc.class_names) == len(sc.class_templates)
    start = 0
    for e in sc.experiences:
        assert e.classes == list(range(start, start + n_classes[e.domain]))     # its own label range
        assert e.task_id == e.index
        for data in (e.train, e.test):
            b = next(data.batches(64))
            assert b.x.shape[1:] == (3, 8, 8) and 0 <= float(b.x.min()) and float(b.x.max()) <= 1
            assert set(data.y.tolist()) <= set(e.classes)
        assert sc.class_templates[start] == TEMPLATES[e.domain]
        start += len(e.classes)
    by_name = {e.domain: e for e in sc.experiences}
    first = {e.domain: sc.class_names[e.classes[0]] for e in sc.experiences}
    assert first["caltech101"] == "off-center face" and first["eurosat"] == "annual crop land"
    assert first["mnist"] == "0 - zero" and first["cifar100"] == "apple" and first["flowers"] == "pink primrose"
    assert sc.class_names[by_name["cifar100"].classes[1]] == "aquarium fish"       # underscores -> spaces
    assert sc.class_names[by_name["sun397"].classes[1]] == "bus interior"
    assert "pink-yellow dahlia" in sc.class_names
    # ZSCL's 80/20 random_split (seed 42) for Caltech101, EuroSAT, SUN397; official splits elsewhere
    assert (len(by_name["eurosat"].train), len(by_name["eurosat"].test)) == (24, 6)
    assert (len(by_name["sun397"].train), len(by_name["sun397"].test)) == (4, 2)
    assert (len(by_name["flowers"].train), len(by_name["flowers"].test)) == (2, 2)
    assert by_name["flowers"].test.y.tolist() == [by_name["flowers"].classes[0], by_name["flowers"].classes[1]]


def test_order_II_and_samples_per_task(fake_root, no_md5):
    root, _ = fake_root
    sc = mtil(MTILConfig(root=str(root), image_size=8, order="II", train_samples_per_task=7, augment=False), seed=0)
    assert [e.domain for e in sc.experiences] == ORDERS["II"]
    assert all(len(e.train) == 7 for e in sc.experiences)


def test_zscl_split_is_torch_random_split_seed_42():
    for n in (5, 37, 100):
        tr, te = _random_80_20(n)
        a, b = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)],
                                             generator=torch.Generator().manual_seed(42))
        assert tr.tolist() == list(a.indices) and te.tolist() == list(b.indices)


def test_repeat_to_cycles_permutations():
    from cl.data import TensorData
    d = TensorData(torch.zeros(5, 1), torch.arange(5))
    r = repeat_to(d, 12, seed=0)
    assert len(r) == 12 and sorted(r.y[:5].tolist()) == list(range(5)) and sorted(r.y[5:10].tolist()) == list(range(5))


def test_random_resized_crop_full_area_is_identity_and_otherwise_changes_pixels():
    x = torch.rand(3, 3, 16, 16)
    same = random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x.clamp(0, 1), atol=1e-5)
    out = random_resized_crop()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_stand_in_tasks_and_errors(tmp_path):
    sc = mtil(MTILConfig(datasets=["digits"], image_size=8, test_fraction=0.1), seed=0)
    assert sc.class_names[3] == "3 - three" and sc.class_templates[0] == TEMPLATES["digits"]
    assert len(sc.experiences[0].test) == int(int(1797 * 0.3) * 0.1)        # digits: 539 test images, 10%
    with pytest.raises(ConfigError, match="order"):
        mtil(MTILConfig(order="III"), seed=0)
    with pytest.raises(ConfigError, match="unknown or repeated"):
        mtil(MTILConfig(datasets=["digits", "digits"]), seed=0)
    with pytest.raises(DataError, match="FGVCAircraft not found"):
        mtil(MTILConfig(datasets=["aircraft"], root=str(tmp_path)), seed=0)
