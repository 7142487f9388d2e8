"""VOC 2007 and COCO 2014 loaders on tiny folders in the official layouts; named splits; mosaics."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cl.errors import ConfigError, DataError
from cl.registry import SCENARIOS, load_builtins
from conftest import SHARED
from scenarios import multilabel_data as md


def _jpg(path, color, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8)).save(path)


def _voc_xml(objects):
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><folder>VOC2007</folder>{objs}</annotation>"


def write_voc(root):
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    images = {  # id: (split, objects (name, difficult))
        "000001": ("trainval", [("dog", 0), ("person", 0)]),
        "000002": ("trainval", [("aeroplane", 0), ("person", 1)]),   # difficult person: not a label
        "000003": ("test", [("tvmonitor", 0), ("dog", 0), ("dog", 0)]),
        "000004": ("test", [("bicycle", 0)]),
    }
    os.makedirs(os.path.join(base, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(base, "ImageSets", "Main"), exist_ok=True)
    for k, (i, (split, objs)) in enumerate(images.items()):
        with open(os.path.join(base, "Annotations", f"{i}.xml"), "w") as f:
            f.write(_voc_xml(objs))
        _jpg(os.path.join(base, "JPEGImages", f"{i}.jpg"), 40 * k)
    for split in ("trainval", "test"):
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i, (s, _) in images.items() if s == split))
    return base


def test_voc_labels_from_xml_non_difficult(tmp_path):
    write_voc(str(tmp_path))
    train, test, names = md.voc2007(str(tmp_path), image_size=16)
    assert names == sorted(names) and len(names) == 20                    # the authors' sorted class order
    idx = {n: k for k, n in enumerate(names)}
    assert train.x.shape == (2, 3, 16, 16) and train.x.dtype == torch.uint8
    assert torch.nonzero(train.y[0]).flatten().tolist() == sorted([idx["dog"], idx["person"]])
    assert torch.nonzero(train.y[1]).flatten().tolist() == [idx["aeroplane"]]   # difficult person dropped
    assert torch.nonzero(test.y[0]).flatten().tolist() == sorted([idx["dog"], idx["tvmonitor"]])


def test_voc_refuses_doctype_and_entities(tmp_path):
    base = write_voc(str(tmp_path))
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            "<annotation><object><name>&lol2;</name><difficult>0</difficult></object></annotation>")
    with open(os.path.join(base, "Annotations", "000001.xml"), "w") as f:
        f.write(bomb)
    with pytest.raises(DataError, match="DOCTYPE or ENTITY"):
        md.voc2007(str(tmp_path), image_size=16)


def test_voc_missing_folder_says_where(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit"):
        md.voc2007(str(tmp_path / "nowhere"))


def write_coco(root):
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    for split, imgs, anns in (
            ("train", [(10, "a.jpg"), (11, "b.jpg"), (12, "c.jpg")], [(10, 18), (10, 1), (10, 1), (11, 3)]),
            ("val", [(20, "d.jpg"), (21, "e.jpg")], [(20, 3), (21, 1), (21, 18)])):
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        for k, (iid, name) in enumerate(imgs):
            _jpg(os.path.join(root, f"{split}2014", name), 50 * k, size=(24, 20))
        data = {"images": [{"id": i, "file_name": n} for i, n in imgs], "categories": cats,
                "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(anns)]}
        with open(os.path.join(root, "annotations", f"instances_{split}2014.json"), "w") as f:
            json.dump(data, f)


def test_coco_labels_and_sorted_name_order(tmp_path):
    write_coco(str(tmp_path))
    train, test, names = md.coco2014(str(tmp_path), image_size=8)
    assert names == ["car", "dog", "person"]                              # sorted by name, not by category id
    assert train.y.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]          # image 12 has no annotation
    assert test.y.tolist() == [[1, 0, 0], [0, 1, 1]]
    assert train.x.shape == (3, 3, 8, 8)


def test_named_splits_check_dataset_and_sizes(tmp_path):
    load_builtins()
    cfg_cls = SCENARIOS.config_of("multilabel_split")
    with pytest.raises(ConfigError, match="split of voc2007"):
        SCENARIOS.get("multilabel_split")(cfg_cls(dataset="coco2014", split="voc_b0_c4", root=str(tmp_path)))
    write_voc(str(tmp_path))
    # 4 images cannot fill 5 tasks of VOC B0-C4: a clear error, not an empty experience
    with pytest.raises(ConfigError, match="has 0 training"):
        SCENARIOS.get("multilabel_split")(cfg_cls(dataset="voc2007", split="voc_b0_c4", root=str(tmp_path),
                                                  image_size=8))
    from scenarios.multilabel import SPLITS
    from cl.multilabel import task_classes
    sizes = {k: [len(t) for t in task_classes(list(range(80 if d == "coco2014" else 20)), b, i)]
             for k, (d, b, i) in SPLITS.items()}
    assert sizes == {"coco_b0_c10": [10] * 8, "coco_b40_c10": [40, 10, 10, 10, 10],
                     "voc_b0_c4": [4] * 5, "voc_b10_c2": [10, 2, 2, 2, 2, 2]}


def test_mosaic_labels_are_the_tiles_classes():
    from cl.data import TensorData
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    single = TensorData(x, torch.tensor([0, 1, 2, 3, 4]))
    mx, my = md.mosaics(single, 20, 5, torch.Generator().manual_seed(0))
    assert mx.shape == (20, 3, 4, 4)
    for k in range(20):
        tiles = {int(mx[k, 0, 0, 0]), int(mx[k, 0, 0, 2]), int(mx[k, 0, 2, 0]), int(mx[k, 0, 2, 2])}
        assert torch.nonzero(my[k]).flatten().tolist() == sorted(tiles)   # pixel value = class here


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "cifar10-jpeg")),
                    reason="needs the CIFAR-10 JPEG copy in ../shared/data (benchmark data, not in the repo)")
def test_cifar10_mosaic_from_shared_data():
    train, test, names = md.cifar10_mosaic(os.path.join(SHARED, "data", "cifar10-jpeg"), n_train=50, n_test=20)
    assert train.x.shape == (50, 3, 64, 64) and names[0] == "airplane"
    assert ((train.y.sum(1) >= 1) & (train.y.sum(1) <= 4)).all()
