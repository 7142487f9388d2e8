"""Per-sample augmented views of test batches, as tensor ops (no PIL), for methods whose authors
draw them in the data loader: AdaContrast's weak/strong views and AugMix views (TTAug, MEMO).

    weak = moco_weak(x)            # x: float [B, C, H, W] in [0, 1]; each image its own draw
    strong = moco_strong(x)
    views = augmix_views(x, n=32)  # [n, B, C, H, W]

The authors (RMT benchmark ``augmentations/transforms_adacontrast.py`` and
``transforms_augmix.py``) apply torchvision/PIL transforms to each decoded image; the operations
and parameter ranges here are theirs, but they act on float tensors, so pixel values are not
rounded to 8 bits between operations and PIL's box-approximated blur is a true Gaussian
(kernel 2*ceil(3*sigma)+1). Random draws use torch's global generator (or ``generator``).
"""
import math

import torch
import torchvision.transforms.functional as TF

from cl.errors import ConfigError


def _check(x, who):
    if x.dim() != 4:
        raise ConfigError(f"{who} draws augmented views of image batches [B, C, H, W], got shape {tuple(x.shape)}; "
                          "use an image scenario.")


def _u(lo, hi, generator):
    return float(torch.empty(1).uniform_(lo, hi, generator=generator))


def _flip(img, generator):
    return TF.hflip(img) if torch.rand(1, generator=generator) < 0.5 else img


def moco_weak(x, generator=None):
    """AdaContrast's weak view ("plain"): a random horizontal flip per image (the random crop of
    the authors' pipeline is the identity for images already at the crop size)."""
    _check(x, "adacontrast")
    return torch.stack([_flip(img, generator) for img in x])


def moco_strong(x, generator=None):
    """AdaContrast's strong view ("moco-v2-light"), per image: with p=0.8 colour jitter
    (brightness, contrast, saturation factors in [0.6, 1.4], hue in [-0.1, 0.1], random order),
    with p=0.2 grayscale, with p=0.5 Gaussian blur (sigma in [0.1, 2]), random horizontal flip."""
    _check(x, "adacontrast")
    out = []
    for img in x:
        if torch.rand(1, generator=generator) < 0.8:
            for op in torch.randperm(4, generator=generator).tolist():
                if op == 3:
                    img = TF.adjust_hue(img, _u(-0.1, 0.1, generator))
                else:
                    fn = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)[op]
                    img = fn(img, _u(0.6, 1.4, generator))
        if img.shape[0] == 3 and torch.rand(1, generator=generator) < 0.2:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if torch.rand(1, generator=generator) < 0.5:
            sigma = _u(0.1, 2.0, generator)
            k = 2 * math.ceil(3 * sigma) + 1
            img = TF.gaussian_blur(img.unsqueeze(0), [k, k], [sigma, sigma]).squeeze(0)
        out.append(_flip(img, generator))
    return torch.stack(out).clamp(0.0, 1.0)
