"""Image files on disk as a data type: decoding (PIL), folder listings, and ``ImageFiles``, a
``TensorData`` that decodes batch by batch with a background prefetch (for collections too large to
hold decoded, e.g. ImageNet-C). Dataset adapters that use it are in ``scenarios.datasets``."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cl.data import Batch, TensorData, to_float
from cl.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


def decode_image(path, resize=0, crop=0):
    """One image file -> uint8 array [H, W, 3]: shorter side resized to ``resize`` (0: keep), then a
    centred ``crop`` x ``crop`` (0: keep)."""
    from PIL import Image
    try:
        return _decode(Image, path, resize, crop)
    except (OSError, ValueError, Image.DecompressionBombError) as e:   # UnidentifiedImageError is an OSError
        raise DataError(f"Cannot decode image {path}: {type(e).__name__}: {e}. The file is corrupt, truncated or not "
                        "an image: replace or delete it.") from None


def _decode(Image, path, resize, crop):
    with Image.open(path) as im:
        im = im.convert("RGB")
        if resize:
            w, h = im.size
            s = resize / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        if crop:
            w, h = im.size
            left, top = (w - crop) // 2, (h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
        return np.asarray(im)


def decode_images(paths, resize=0, crop=0, workers=4):
    """Image files -> uint8 tensor [N, 3, H, W]; all must end up the same size."""
    if not paths:
        return torch.zeros(0, 3, max(crop, 1), max(crop, 1), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, resize, crop), paths))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"Images have different sizes {sorted(shapes)[:3]} (e.g. '{paths[0]}'); set the scenario's "
                        "resize/crop (image_size) option so that they are resized to one size.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def list_images(folder):
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTENSIONS)]


def folder_samples(folder, classes=None):
    """``folder/<class>/*.jpg`` -> (paths, labels, class names) with classes in sorted order."""
    if classes is None:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cdir = os.path.join(folder, cls)
        if os.path.isdir(cdir):
            files = list_images(cdir)
            if not files:   # its accuracy would enter the averages as 0.0: refuse
                raise DataError(f"Class folder '{cdir}' holds no images ({', '.join(IMAGE_EXTENSIONS)}). Add its "
                                "images or remove the folder.")
            paths += files
            labels += [label] * len(files)
    if not paths:
        raise DataError(f"No images found under '{folder}' (expected {folder}/<class>/*.jpg).")
    return paths, labels, classes


class ImageFiles(TensorData):
    """Labelled image files decoded batch by batch (for collections too large to hold decoded).

    Behaves as TensorData for the runner (``batches``, ``subset``, ``len``); ``x`` decodes all
    images at once (avoid on large sets). ``batches`` decodes one batch ahead in a background
    thread (decoding overlaps the model's work) and pins memory for the copy to a GPU.
    """

    def __init__(self, paths, y, g=None, resize=0, crop=0, transform=None, prefetch=True):
        self.paths, self.resize, self.crop, self.prefetch = list(paths), resize, crop, prefetch
        self.y, self.g, self.transform = torch.as_tensor(y, dtype=torch.long), g, transform
        if len(self.paths) != len(self.y):
            raise ValueError(f"{len(self.paths)} paths but {len(self.y)} labels")

    @property
    def x(self):
        return decode_images(self.paths, self.resize, self.crop)

    def _new(self, paths, y, g, transform):
        return ImageFiles(paths, y, g, self.resize, self.crop, transform, self.prefetch)

    def subset(self, index):
        index = torch.as_tensor(index, dtype=torch.long)
        g = self.g[index] if self.g is not None else None
        return self._new([self.paths[i] for i in index.tolist()], self.y[index], g, self.transform)

    def with_transform(self, transform):
        return self._new(self.paths, self.y, self.g, transform)

    def to(self, device):
        return self

    def batches(self, batch_size, shuffle=False, generator=None, device="cpu", drop_last=False):
        """Decode batch by batch; the next batch is decoded in a background thread while the current
        one is in use (PIL releases the GIL), and pinned for an asynchronous copy on CUDA."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        chunks = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
        pin = torch.device(device).type == "cuda"

        def load(idx):
            x = decode_images([self.paths[i] for i in idx.tolist()], self.resize, self.crop)
            return x.pin_memory() if pin else x

        with ThreadPoolExecutor(max_workers=1) as background:
            pending = background.submit(load, chunks[0]) if chunks and self.prefetch else None
            for k, idx in enumerate(chunks):
                x = pending.result() if self.prefetch else load(idx)
                if self.prefetch and k + 1 < len(chunks):
                    pending = background.submit(load, chunks[k + 1])
                x = to_float(x.to(device, non_blocking=pin))
                if self.transform is not None:
                    x = self.transform(x, generator)
                g = self.g[idx].to(device) if self.g is not None else None
                yield Batch(x, self.y[idx].to(device), g)
