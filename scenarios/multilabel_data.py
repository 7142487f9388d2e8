"""Multi-label datasets in their official layouts, and the mosaic stand-in.

Each loader returns ``(train, test, class_names)``: ``TensorData`` with uint8 images [N, 3, S, S]
(shorter side resized to S, centred S x S crop) and multi-hot float targets [N, C].

- PASCAL VOC 2007 (``voc2007``): ``ROOT/VOCdevkit/VOC2007/{Annotations/<id>.xml, ImageSets/Main/
  {trainval,test}.txt, JPEGImages/<id>.jpg}``. An image holds a class when its XML has a
  non-difficult object of it; this is the ``1`` of the per-class lists ``ImageSets/Main/<class>_<split>.txt``
  that the MULTI-LANE code reads (``0`` there = only difficult instances, not a label). Classes in
  sorted name order (the authors' ``VOC`` class in ``multi_lane/continual_datasets/continual_datasets.py``
  sorts them). XML files with a DOCTYPE or ENTITY declaration are refused (no entity expansion).
- MS-COCO 2014 (``coco2014``): ``ROOT/annotations/instances_{train,val}2014.json`` and
  ``ROOT/{train2014,val2014}/<file_name>``; an image's labels are the categories of its instance
  annotations; the 80 classes in sorted *name* order (the authors' ``COCO`` class:
  ``sorted(categories.values())``). Images without annotations are kept (no task will hold them).
- ``cifar10_mosaic`` (STAND-IN, not a multi-label benchmark): 2x2 mosaics of real CIFAR-10 images
  (the JPEG copy's ``train``/``test`` folders), each tile drawn uniformly at random (seeded) from
  the same split; the targets are the multi-hot union of the tiles' classes. ``synthetic_mosaic``
  does the same with the synthetic Gaussian-prototype images (tests, no data on disk).
"""
import json
import os
import xml.etree.ElementTree as ET

import torch

from cl.data import TensorData
from cl.errors import DataError
from scenarios.image_files import decode_images, folder_samples

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def _missing(name, path, how):
    return DataError(f"Dataset '{name}' not found: looked for '{os.path.abspath(path)}'. {how}")


# ---------------------------------------------------------------------------- VOC 2007
def parse_voc_xml(path):
    """Names of the non-difficult objects of one VOC annotation file (DOCTYPE/ENTITY refused)."""
    with open(path, "rb") as f:
        data = f.read()
    head = data.upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise DataError(f"{path} declares a DOCTYPE or ENTITY; VOC annotation files have none, and entity "
                        "expansion is refused. Replace the file with the official one.")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DataError(f"Cannot parse the VOC annotation {path}: {e}. Replace it with the official file.") from None
    names = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if (obj.findtext("difficult") or "0").strip() != "1":
            names.append(name)
    return names


def _voc_split(base, split, size, index):
    ids_file = os.path.join(base, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(ids_file):
        raise _missing("voc2007", ids_file, "Expected ROOT/VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt "
                       "(VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar extracted into ROOT).")
    with open(ids_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    y = torch.zeros(len(ids), len(VOC_CLASSES))
    for k, i in enumerate(ids):
        for name in parse_voc_xml(os.path.join(base, "Annotations", f"{i}.xml")):
            if name not in index:
                raise DataError(f"Unknown VOC class '{name}' in {base}/Annotations/{i}.xml; expected one of "
                                f"{', '.join(VOC_CLASSES)}.")
            y[k, index[name]] = 1
    x = decode_images([os.path.join(base, "JPEGImages", f"{i}.jpg") for i in ids], resize=size, crop=size)
    return TensorData(x, y)


def voc2007(root, image_size=224):
    """(trainval, test, class names) of PASCAL VOC 2007 (module docstring)."""
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    index = {c: k for k, c in enumerate(VOC_CLASSES)}
    return _voc_split(base, "trainval", image_size, index), _voc_split(base, "test", image_size, index), VOC_CLASSES


# ---------------------------------------------------------------------------- COCO 2014
def _coco_split(root, split, size):
    ann = os.path.join(root, "annotations", f"instances_{split}2014.json")
    if not os.path.isfile(ann):
        raise _missing("coco2014", ann, "Expected ROOT/annotations/instances_{train,val}2014.json and "
                       "ROOT/{train2014,val2014}/ (annotations_trainval2014.zip, train2014.zip, val2014.zip).")
    try:
        with open(ann) as f:
            data = json.load(f)
        cats = {c["id"]: c["name"] for c in data["categories"]}
        images, annotations = data["images"], data["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{ann} is not a COCO instances file ({type(e).__name__}: {e}).") from None
    names = sorted(cats.values())
    col = {cid: names.index(n) for cid, n in cats.items()}
    row = {img["id"]: k for k, img in enumerate(images)}
    y = torch.zeros(len(images), len(names))
    for a in annotations:
        if a["image_id"] not in row or a["category_id"] not in col:
            raise DataError(f"{ann}: an annotation names image {a['image_id']} or category {a['category_id']} "
                            "that the file does not list.")
        y[row[a["image_id"]], col[a["category_id"]]] = 1
    x = decode_images([os.path.join(root, f"{split}2014", img["file_name"]) for img in images], resize=size, crop=size)
    return TensorData(x, y), names


def coco2014(root, image_size=224):
    """(train2014, val2014, class names) of MS-COCO 2014 (module docstring)."""
    train, names = _coco_split(root, "train", image_size)
    test, test_names = _coco_split(root, "val", image_size)
    if names != test_names:
        raise DataError("instances_train2014.json and instances_val2014.json list different categories.")
    return train, test, names


# ---------------------------------------------------------------------------- mosaics (stand-in)
def mosaics(data, n, num_classes, generator, tile_size=0):
    """``n`` 2x2 mosaics of random images of a single-label TensorData: (uint8 [n, 3, 2H, 2W], multi-hot [n, C]).
    ``tile_size``: each tile first resized to tile_size x tile_size (area interpolation; 0: as stored)."""
    idx = torch.randint(len(data), (n, 4), generator=generator)
    x = data.x[idx]                                                    # [n, 4, 3, H, W]
    if tile_size and tile_size != x.shape[-1]:
        flat = torch.nn.functional.interpolate(x.flatten(0, 1).float(), size=(tile_size, tile_size), mode="area")
        x = flat.round().clamp(0, 255).to(torch.uint8).view(n, 4, 3, tile_size, tile_size)
    top = torch.cat([x[:, 0], x[:, 1]], dim=3)
    bottom = torch.cat([x[:, 2], x[:, 3]], dim=3)
    y = torch.nn.functional.one_hot(data.y[idx], num_classes).amax(1).float()
    return torch.cat([top, bottom], dim=2).contiguous(), y


def cifar10_mosaic(root, n_train=2000, n_test=500, seed=0, tile_size=0):
    """STAND-IN: mosaics of the CIFAR-10 JPEG copy (ROOT/{train,test}/<class>/*.jpg), 64x64
    (``tile_size=16``: 32x32 mosaics of downsized tiles)."""
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise _missing("cifar10_mosaic", os.path.join(root, split), "Expected the CIFAR-10 JPEG copy "
                           "ROOT/{train,test}/<class>/*.jpg (e.g. /work/shared/data/cifar10-jpeg); set scenario.root.")
    g = torch.Generator().manual_seed(seed)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        paths, labels, classes = folder_samples(os.path.join(root, split))
        # decode only the images the mosaics use
        pick = torch.randint(len(paths), (4 * n,), generator=g).unique()
        x = decode_images([paths[i] for i in pick.tolist()])
        single = TensorData(x, torch.tensor(labels)[pick])
        out.append(TensorData(*mosaics(single, n, len(classes), g, tile_size)))
    return out[0], out[1], classes


def synthetic_mosaic(num_classes=6, n_train=120, n_test=60, shape=(3, 8, 8), seed=0):
    """Mosaics of the synthetic Gaussian-prototype images (tests and smoke runs; no data on disk)."""
    from scenarios.datasets import synthetic
    train, test, info = synthetic(seed=seed, num_classes=num_classes, n_train=20, n_test=10, shape=tuple(shape))
    g = torch.Generator().manual_seed(seed)
    tr = TensorData(*mosaics(train, n_train, num_classes, g))
    te = TensorData(*mosaics(test, n_test, num_classes, g))
    return tr, te, info["class_names"]
