"""Batch augmentations as tensor ops (no per-sample PIL). Each takes ``(x, generator)``."""
import torch
import torch.nn.functional as F

from cl.registry import AUGMENTATIONS


@AUGMENTATIONS.register("crop_flip")
def random_crop_flip(padding=4, flip=True):
    """Random crop with zero padding and horizontal flip, per sample, on a whole batch.

    One gather over the flattened padded images: the per-sample offsets (and the flip, as
    reversed column indices) become an index tensor. Random draws come from ``generator``.
    """

    def apply(x, generator=None):
        n, c, h, w = x.shape
        hp, wp = h + 2 * padding, w + 2 * padding
        padded = F.pad(x, (padding,) * 4).reshape(n, c, hp * wp)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
        dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
        cols = dx + torch.arange(w)
        if flip:
            flipped = torch.rand(n, generator=generator) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        rows = dy + torch.arange(h)
        index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
        return padded.gather(2, index.to(x.device)).reshape(n, c, h, w)

    return apply


def build_augmentation(name):
    """The batch function of a registered augmentation (``none``: no augmentation)."""
    return None if name == "none" else AUGMENTATIONS.get(name)()
