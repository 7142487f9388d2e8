"""Per-severity parameter tables for the common image corruptions.

The numbers are the published per-severity settings of

    D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to
    Common Corruptions and Perturbations", ICLR 2019 (arXiv:1903.12261),

as used by the public generation scripts of the ``hendrycks/robustness``
repository: ``ImageNet-C/create_c/make_cifar_c.py`` (32x32, CIFAR-10-C /
CIFAR-100-C) and ``ImageNet-C/create_c/make_imagenet_c.py`` (224x224,
ImageNet-C).  Only the numeric settings are reproduced here; the code in
``scenarios/corruptions/__init__.py`` is an independent implementation.

Each table maps a corruption name to a tuple of five entries, one per severity
1..5.  The meaning of the tuple entries is documented next to each table.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CIFAR_PARAMS", "IMAGENET_PARAMS", "PARAM_TABLES"]


def _zooms(stop: float, step: float) -> tuple:
    """Zoom factors 1, 1+step, ... below ``stop`` (numpy ``arange`` semantics,
    which is how the source specifies them; note that floating point makes
    some of these ranges include ``stop - step`` rounding up to ``stop``)."""
    return tuple(float(z) for z in np.arange(1.0, stop, step))


# --------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-100-C (32x32).  Source: make_cifar_c.py.
# --------------------------------------------------------------------------
CIFAR_PARAMS = {
    # std of additive N(0, c) noise, image in [0, 1]
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # photon count scale c: x' = Poisson(c * x) / c
    "shot_noise": (500, 250, 100, 75, 50),
    # salt-and-pepper amount (fraction of corrupted values)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # std of multiplicative noise: x' = x + x * N(0, c)
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    # gaussian sigma (pixels)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    # (sigma, max pixel displacement, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (disk radius, anti-alias gaussian sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (radius, sigma) of the ImageMagick-style motion blur; angle ~ U(-45, 45)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # zoom factors averaged together with the original image
    "zoom_blur": (
        _zooms(1.06, 0.01), _zooms(1.11, 0.01), _zooms(1.16, 0.01),
        _zooms(1.21, 0.01), _zooms(1.26, 0.01),
    ),
    # (flake mean, flake std, zoom, threshold, blur radius, blur sigma,
    #  image blend weight); blur angle ~ U(-135, -45)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (fog strength, plasma fractal wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # additive change of the HSV value channel
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # contrast factor around the per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (alpha, sigma, affine jitter), in pixels (source writes them as 32 * f)
    "elastic_transform": (
        (32 * 0.0, 32 * 0.0, 32 * 0.08),
        (32 * 0.05, 32 * 0.2, 32 * 0.07),
        (32 * 0.08, 32 * 0.06, 32 * 0.06),
        (32 * 0.1, 32 * 0.04, 32 * 0.05),
        (32 * 0.1, 32 * 0.03, 32 * 0.03),
    ),
    # relative size of the low-resolution image
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # (liquid mean, liquid std, liquid sigma, threshold, intensity, mud?)
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    # (saturation factor, saturation offset)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

# Settings that are not per-severity numbers but differ between the tables.
CIFAR_EXTRA = {
    "frost_scale": 0.2,      # the frost overlays are shrunk to 20% first
    "fog_mapsize": 32,       # side of the plasma fractal
}

# --------------------------------------------------------------------------
# ImageNet-C (224x224).  Source: make_imagenet_c.py.
# --------------------------------------------------------------------------
_E = 244  # the source scales elastic parameters by 244 (sic, not 224)
IMAGENET_PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": (
        _zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.02),
        _zooms(1.26, 0.02), _zooms(1.31, 0.03),
    ),
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": (
        (_E * 2, _E * 0.7, _E * 0.1),
        (_E * 2, _E * 0.08, _E * 0.2),
        (_E * 0.05, _E * 0.01, _E * 0.02),
        (_E * 0.07, _E * 0.01, _E * 0.02),
        (_E * 0.12, _E * 0.01, _E * 0.02),
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "spatter": (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
}

IMAGENET_EXTRA = {
    "frost_scale": 1.0,      # overlays are cropped at full resolution
    "fog_mapsize": 256,
}

PARAM_TABLES = {
    "cifar": (CIFAR_PARAMS, CIFAR_EXTRA),
    "imagenet": (IMAGENET_PARAMS, IMAGENET_EXTRA),
}
