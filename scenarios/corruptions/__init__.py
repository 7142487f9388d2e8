"""Common image corruptions (CIFAR-10-C / ImageNet-C), implemented in torch.

Reference
---------
D. Hendrycks and T. Dietterich.  "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations".  ICLR 2019.  arXiv:1903.12261.

This module re-implements the 15 benchmark corruptions and the 4 extra ones of
that paper with the per-severity parameters of its public generation scripts
(``make_cifar_c.py`` for 32x32 images, ``make_imagenet_c.py`` for 224x224; see
:mod:`scenarios.corruptions._params`).  It does not need ImageMagick, OpenCV,
scikit-image or the ``imagecorruptions`` package: every operation is written
with numpy/torch and vectorised over the batch where the algorithm allows.

Usage::

    from scenarios.corruptions import corrupt, CORRUPTIONS
    x_c = corrupt(x_uint8, "fog", severity=5, seed=0)   # [N, 3, H, W] uint8

Randomness and determinism
    Every image gets its own random stream keyed by ``(seed, corruption, severity,
    index)``, where ``index`` is the position of the image in the dataset (``indices``
    argument, default ``0..N-1``).  The output for an image therefore depends only on the
    seed, its index and its pixels -- not on the batch it is processed in -- so a dataset
    can be corrupted in chunks by passing ``indices=range(start, start + len(chunk))``.
    The four noise corruptions (``FAST_STREAM_CORRUPTIONS``) use
    :class:`scenarios.corruptions._rng.ImageRNG` streams (SFC64, stream version 2, since
    2026-12-02): they draw 16 random bits per value (impulse noise 32) and read the noise
    from tables (inverse CDF at 2^-16 quantiles; shot noise: an alias table of the output
    level given the input level), so their probabilities are exact up to multiples of
    2^-16.  The other random corruptions use ``numpy.random.default_rng([seed,
    crc32(name), severity, index])`` per image.  ``STREAM_VERSION`` changes whenever a
    seed starts producing different images.

Fidelity notes
    * Float results are converted to uint8 by truncation (``np.uint8`` of the
      reference pipeline), not rounding.
    * ``glass_blur`` reproduces the reference behaviour in which the "swap" of
      a pixel with a random neighbour is effectively a copy of the neighbour
      into the pixel (the reference swaps numpy views).
    * ``frost`` draws from the first five of the six overlay images, like the
      reference scripts.
    * ImageNet-C additionally stored its images as JPEG (quality 85); that
      storage step is not part of :func:`corrupt`.
    * Measured agreement with the reference generator's outputs (the golden set
      in ``../shared/data/cifar10c-golden``): ``python -m benchmarks.corruption_golden``
      prints it per corruption and severity (table in BENCHMARKS.md), and
      ``tests/test_corruption_golden.py`` asserts it.
"""
from __future__ import annotations

import io
import math
import os
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import _ops as ops
from . import _rng
from ._rng import STREAM_VERSION
from ._params import PARAM_TABLES

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "RANDOM_CORRUPTIONS",
    "FROST_FILES",
    "STREAM_VERSION",
    "corrupt",
    "resolve_params",
]

#: The 15 benchmark corruptions, in the order used by the continual TTA literature.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 held-out corruptions of the paper.
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
#: Corruptions whose output depends on the seed.
RANDOM_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
    "motion_blur", "snow", "frost", "fog", "elastic_transform", "spatter",
)
#: Frost overlay file names; the reference samples among the first five.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FROST_ENV = "CL_FROST_DIR"

Tensor = torch.Tensor


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def resolve_params(params: Optional[str], height: int, width: int) -> str:
    """Name of the parameter table: ``params`` if given, else ``"cifar"`` for
    32x32 images and ``"imagenet"`` otherwise."""
    if params is None:
        return "cifar" if (height, width) == (32, 32) else "imagenet"
    if params not in PARAM_TABLES:
        raise ValueError(f"params must be one of {sorted(PARAM_TABLES)} or None, got {params!r}")
    return params


#: corruptions drawing from :class:`_rng.ImageRNG` streams (stream version 2); the others
#: keep one ``numpy.random.default_rng([seed, crc32(name), severity, index])`` per image
FAST_STREAM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def _rngs(seed: int, name: str, severity: int, indices: Sequence[int]) -> list:
    """One independent stream per image, keyed by (seed, name, severity, index)."""
    if name in FAST_STREAM_CORRUPTIONS:
        return _rng.image_rngs(seed, name, severity, indices)
    # default_rng([seed, crc32(name), severity, index]) per image, hashed for the batch at once
    return _rng.default_rngs([int(seed), zlib.crc32(name.encode()), int(severity)], indices)


#: images per chunk of the chunk-by-chunk (cache-sized) fused loops
_CHUNK = 64


def _is_generator(rngs) -> bool:
    return all(type(r) is np.random.Generator for r in rngs)


def _normal_fields(rngs, loc: float, scale: float, shape) -> np.ndarray:
    """``np.stack([r.normal(loc, scale, shape) for r in rngs])``, drawn in place: numpy's
    ``normal`` returns ``loc + scale * z`` for its standard normal ``z`` (the same stream), so
    the ``z`` are written into one array and scaled once, with the same two roundings."""
    out = np.empty((len(rngs),) + tuple(shape))
    if not _is_generator(rngs):                   # e.g. replayed reference draws
        for k, r in enumerate(rngs):
            out[k] = r.normal(loc, scale, shape)
        return out
    for k, r in enumerate(rngs):
        r.standard_normal(out=out[k])
    out *= scale
    out += loc
    return out


def _to_float(x: Tensor) -> Tensor:
    return x.to(torch.float64) / 255.0


def _to_uint8(y: Tensor) -> Tensor:
    """[0, 1] floats -> uint8 by truncation (like ``np.uint8(y * 255)``)."""
    return (y.clamp(0, 1) * 255.0).to(torch.uint8)


def _stack(arrays) -> Tensor:
    return torch.from_numpy(np.stack(arrays))


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------


# Fast paths (all streams are ImageRNG): each value takes 16 random bits (impulse noise 32)
# from its image's stream, read as a uniform integer u in [0, 2^16); the noise value is the
# inverse CDF of the wanted distribution at the midpoint (u + 1/2) / 2^16, read from a table
# (shot noise: an alias table of the output level given the input level). Probabilities are
# thus quantised to multiples of 2^-16; the golden set's statistics checks bound the effect.
# Other streams (e.g. the golden set's replay of the reference's draws) take the float path.

_CHUNK = 64          # images per block of the fast paths (keeps the blocks in cache)


def _hwc(x: Tensor) -> np.ndarray:
    """[N, H*W*C] uint8 view (or copy) of ``x`` [N, C, H, W] in channel-last order: the fast
    paths assign random values to an image's values in this order (as the reference's HWC
    arrays), whatever the memory layout of ``x``."""
    return x.permute(0, 2, 3, 1).contiguous().numpy().reshape(x.shape[0], -1)


def _from_hwc(arr: np.ndarray, shape) -> Tensor:
    n, c, h, w = shape
    return torch.from_numpy(arr).view(n, h, w, c).permute(0, 3, 1, 2)


def _u16(rngs, size: int) -> np.ndarray:
    """[N, size] uint16 uniform integers from every image's stream (size even multiple of 4)."""
    return _rng.raw_words(rngs, (size + 3) // 4).view(np.uint16)[:, :size]


@lru_cache(maxsize=64)
def _normal_quantiles(scale: float) -> np.ndarray:
    """scale * Phi^-1((k + 1/2) / 2^16), k = 0..65535 (float64)."""
    p = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536.0
    return (float(scale) * torch.special.ndtri(p)).numpy()


def _table_noise(x: Tensor, rngs, table: np.ndarray, combine) -> Tensor:
    """Fast path of gaussian (``np.add``, int16 offsets) and speckle (``np.multiply``, float32
    factors) noise: each value is ``combine(table[u], value)`` with u 16 random bits of its image's
    stream, clipped to [0, 255] and stored as uint8 (truncation, like np.uint8), block by block."""
    flat = _hwc(x)
    out = np.empty_like(flat)
    for s in range(0, x.shape[0], _CHUNK):
        y = table.take(_u16(rngs[s:s + _CHUNK], flat.shape[1]))
        combine(y, flat[s:s + _CHUNK], out=y)
        np.clip(y, 0, 255, out=y)
        out[s:s + _CHUNK] = y
    return _from_hwc(out, x.shape)


@lru_cache(maxsize=64)
def _gaussian_offsets(c: float) -> np.ndarray:
    """int16 table: floor(255 * noise) at the 2^16 noise quantiles (then x + it, clipped, is
    exactly floor(clip(x / 255 + noise, 0, 1) * 255) of the reference)."""
    return np.floor(255.0 * _normal_quantiles(c)).astype(np.int16)


def _gaussian_noise(x, c, rngs, **_):
    if _rng.all_fast(rngs):
        return _table_noise(x, rngs, _gaussian_offsets(float(c)), np.add)
    noise = _stack([r.normal(0.0, c, x.shape[1:]) for r in rngs])
    return _to_uint8(_to_float(x) + noise)


@lru_cache(maxsize=64)
def _shot_table(c: float) -> np.ndarray:
    """Alias table of shot noise's output level given the input level x: the count
    P ~ Poisson(x / 255 * c) mapped to uint8(clip(P / c, 0, 1) * 255) as in the reference."""
    lam = np.arange(256, dtype=np.float64)[:, None] / 255.0 * c
    kmax = int(c + 12 * np.sqrt(c) + 40)                        # P(count > kmax) < 1e-30
    k = np.arange(kmax + 1, dtype=np.float64)
    log_fact = np.array([math.lgamma(v + 1.0) for v in range(kmax + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = k * np.log(lam) - lam - log_fact
    logp[0] = -np.inf
    logp[0, 0] = 0.0                                            # x = 0: the count is 0
    pmf = np.exp(logp)
    out_level = np.uint8(np.clip(k / c, 0, 1) * 255)           # nondecreasing in the count
    starts = np.flatnonzero(np.r_[True, out_level[1:] != out_level[:-1]])
    prob = np.zeros((256, 256))
    prob[:, out_level[starts]] = np.add.reduceat(pmf, starts, axis=1)
    return _build_alias(prob / prob.sum(1, keepdims=True))


def _build_alias(prob: np.ndarray) -> np.ndarray:
    """Alias tables of the rows of ``prob`` [R, 256], each row rounded to integer weights
    summing to 2^16 (largest remainder), spread over 256 slots of 256 units.

    Entry ``[r * 256 + slot]`` (uint16) is ``(threshold << 8) | alias``: with a uniform
    16-bit ``u``, ``slot = u >> 8`` is the output when ``u & 255 < threshold``, else
    ``alias`` (a full slot is stored as threshold 0, alias = slot).  Construction: Vose's
    method with the small slots taken in order and the large ones in order, written with
    cumulative sums (a large slot serves deficits while their running total is below its
    running excess; when it runs out it becomes a small slot served by the next large one).
    """
    rows = prob.shape[0]
    w = np.floor(prob * 65536).astype(np.int64)
    order = np.argsort(-(prob * 65536 - w), axis=1, kind="stable")
    short = 65536 - w.sum(1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(256)[None, :].repeat(rows, 0), axis=1)
    w += rank < short[:, None]
    small, large = w < 256, w > 256
    deficit = np.where(small, 256 - w, 0)
    excess = np.where(large, w - 256, 0)
    big = np.int64(1 << 20)
    off = (np.arange(rows, dtype=np.int64) * big)[:, None]
    d_cum = np.cumsum(deficit, 1) + off                       # inclusive running deficit
    e_cum = np.cumsum(excess, 1) + off                        # inclusive running excess
    thr = np.zeros((rows, 256), dtype=np.int64)
    alias = np.broadcast_to(np.arange(256), (rows, 256)).copy()
    l_e = e_cum[large]                                        # strictly increasing (row-major)
    l_col = np.nonzero(large)[1]
    s_d = d_cum[small]
    # small slot: served by the first large slot whose running excess exceeds the deficit before it
    j = np.searchsorted(l_e, (d_cum - deficit)[small], side="right")
    thr[small] = w[small]
    alias[small] = l_col[j]
    # large slot: runs out at the first running deficit above its running excess
    pos = np.searchsorted(s_d, l_e, side="left")
    pos_c = np.minimum(pos, len(s_d) - 1) if len(s_d) else pos
    row_of_large = np.nonzero(large)[0]
    inside = (pos < len(s_d)) & (s_d[pos_c] // big == row_of_large) if len(s_d) else np.zeros(len(l_e), bool)
    runs_out = inside & (s_d[pos_c] != l_e) if len(s_d) else inside
    t_large = np.zeros(len(l_e), dtype=np.int64)
    a_large = l_col.copy()
    idx = np.nonzero(runs_out)[0]
    t_large[idx] = 256 - (s_d[pos_c[idx]] - l_e[idx])
    a_large[idx] = l_col[idx + 1]
    thr[large] = t_large
    alias[large] = a_large
    return ((thr.astype(np.uint16) << 8) | alias.astype(np.uint16)).reshape(-1)


def _alias_sample(flat: np.ndarray, u: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Output levels (uint8) for input levels ``flat`` (uint8 [n, m]) and uniforms ``u``
    (uint16 [n, m]) through an alias table of :func:`_build_alias`."""
    pair = np.empty(flat.shape + (2,), dtype=np.uint8)
    pair[..., 0] = u.view(np.uint8).reshape(pair.shape)[..., 1]       # slot = high byte of u
    pair[..., 1] = flat
    slot = pair[..., 0]
    e = table.take(pair.view(np.uint16)[..., 0])                       # key = x * 256 + slot
    w = u << 8
    w |= 255
    keep = (w < e).view(np.uint8)                                      # low byte < threshold
    out = e.astype(np.uint8)                                           # alias
    m = np.bitwise_xor(out, slot)
    m *= keep
    out ^= m                                                           # slot where kept
    return out


def _shot_noise(x, c, rngs, **_):
    if _rng.all_fast(rngs):
        n = x.shape[0]
        table = _shot_table(float(c))
        flat = _hwc(x)
        out = np.empty_like(flat)
        for s in range(0, n, _CHUNK):
            u = _u16(rngs[s:s + _CHUNK], flat.shape[1])
            out[s:s + _CHUNK] = _alias_sample(flat[s:s + _CHUNK], u, table)
        return _from_hwc(out, x.shape)
    lam = _to_float(x).numpy() * c
    counts = _stack([r.poisson(lam[k]) for k, r in enumerate(rngs)])
    return _to_uint8(counts / c)


def _impulse_noise(x, c, rngs, **_):
    """Salt and pepper: each value is replaced with probability ``c``, by 0 or
    1 with equal probability."""
    if _rng.all_fast(rngs):
        # 32 random bits per value: replaced when u < c * 2^32, by 255 * (lowest bit of u)
        n = x.shape[0]
        flat = _hwc(x)
        m = flat.shape[1]
        thr = np.uint32(min(int(round(float(c) * 2 ** 32)), 2 ** 32 - 1))
        out = flat.copy()
        for s in range(0, n, _CHUNK):
            u = _rng.raw_words(rngs[s:s + _CHUNK], (m + 1) // 2).view(np.uint32)[:, :m]
            flip = (u < thr).view(np.uint8)
            salt = np.negative(u.astype(np.uint8) & np.uint8(1))          # 0 or 255
            o = out[s:s + _CHUNK]
            salt ^= o
            salt *= flip
            o ^= salt                                                     # salt where flipped
        return _from_hwc(out, x.shape)
    y = _to_float(x)
    u = _stack([r.random((2,) + tuple(x.shape[1:])) for r in rngs])
    flip = u[:, 0] < c
    salt = u[:, 1] < 0.5
    y = torch.where(flip & salt, torch.ones_like(y), y)
    y = torch.where(flip & ~salt, torch.zeros_like(y), y)
    return _to_uint8(y)


@lru_cache(maxsize=64)
def _speckle_factors(c: float) -> np.ndarray:
    """float32 table 1 + noise at the 2^16 noise quantiles."""
    return (1.0 + _normal_quantiles(c)).astype(np.float32)


def _speckle_noise(x, c, rngs, **_):
    if _rng.all_fast(rngs):
        return _table_noise(x, rngs, _speckle_factors(float(c)), np.multiply)
    y = _to_float(x)
    noise = _stack([r.normal(0.0, c, x.shape[1:]) for r in rngs])
    return _to_uint8(y + y * noise)


# --------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _scipy_gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1-D gaussian of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate * sigma +
    0.5)``), with scipy's float64 operations: ``exp(-0.5 / sigma^2 * x^2)``, divided by its sum."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    return phi / phi.sum()


#: float64 values per block of the gaussian blur (a few L2-sized arrays)
_BLUR_BLOCK = 40_000


def _gaussian_blur(x, c, **_):
    """skimage's ``gaussian(x / 255., sigma=c, channel_axis=-1)`` (scipy ``gaussian_filter``,
    ``nearest`` borders), then ``uint8(clip(., 0, 1) * 255)``, with scipy's float64 operations in
    scipy's order, so the same values as the reference: the rows (axis 0) first, then the
    columns, each output ``v[i] * w[0] + (v[i - r] + v[i + r]) * w[r] + ... + (v[i - 1] + v[i + 1])
    * w[1]`` (its loop for symmetric kernels: the centre, then the pairs from the outermost in).

    Implementation: the uint8 images are edge-padded by ``r`` on both axes (channel-last, one
    copy), then block by block converted to ``level / 255.`` and filtered with shifted slices
    of the flattened block (whole contiguous runs; the row pass also filters the padding
    columns, which gives exactly the edge-padded row-pass output the column pass needs). The
    clip is left out: every term is non-negative and the taps sum to 1 within rounding, so the
    values lie in [0, 1 + 1e-15] and ``uint8(v * 255)`` is the same with or without it."""
    n, ch, h, w = x.shape
    taps = _scipy_gaussian_taps(float(c))
    r = (len(taps) - 1) // 2
    hp, wp = h + 2 * r, w + 2 * r
    a = _hwc(x).reshape(n, h, w, ch)
    pad = np.empty((n, hp, wp, ch), dtype=np.uint8)
    pad[:, r:r + h, r:r + w] = a
    pad[:, r:r + h, :r] = a[:, :, :1]
    pad[:, r:r + h, r + w:] = a[:, :, w - 1:]
    pad[:, :r] = pad[:, r:r + 1]
    pad[:, r + h:] = pad[:, r + h - 1:r + h]
    out = np.empty((n, h, w, ch), dtype=np.uint8)
    row = wp * ch                                   # values per padded row
    size = hp * row                                 # values per padded image
    g_max = max(1, _BLUR_BLOCK // size)
    buf, y1, y2, tmp = (np.empty((min(g_max, n), size)) for _ in range(4))
    run_h = h * row                                 # row pass: output rows r..r+h-1, all columns
    run_w = h * row - 2 * r * ch                    # column pass: from (r, r) to (r+h-1, r+w-1)
    for s in range(0, n, g_max):
        g = min(g_max, n - s)
        v = buf[:g]
        np.divide(pad[s:s + g].reshape(g, size), 255.0, out=v)
        for src, dst, run, base, step in ((v, y1[:g], run_h, 0, row), (y1[:g], y2[:g], run_w, r * row, ch)):
            o = dst[:, base + r * step:base + r * step + run]
            t = tmp[:g, :run]
            np.multiply(src[:, base + r * step:base + r * step + run], taps[r], out=o)
            for j in range(r, 0, -1):
                np.add(src[:, base + (r - j) * step:base + (r - j) * step + run],
                       src[:, base + (r + j) * step:base + (r + j) * step + run], out=t)
                t *= taps[r - j]
                o += t
        res = y2[:g].reshape(g, hp, wp, ch)[:, r:r + h, r:r + w]
        np.multiply(res, 255.0, out=out[s:s + g], casting="unsafe")       # truncation, as np.uint8
    return _from_hwc(out.reshape(n, -1), x.shape)


def _glass_blur(x, c, rngs, **_):
    """Gaussian blur, quantise, locally scramble pixels, gaussian blur again.

    Pixels are visited row by row from the bottom-right, ``iterations`` times;
    each visited pixel takes the value of a neighbour at offset
    ``(dy, dx)`` with ``dy, dx`` uniform in ``[-d, d - 1]``.
    """
    sigma, d, iterations = c
    n, ch, h, w = x.shape
    y = _to_uint8(ops.gaussian_filter(_to_float(x), sigma, mode="edge"))
    hs = np.arange(h - d, d, -1)
    ws = np.arange(w - d, d, -1)
    # offsets[n, it, i, j] = (dx, dy) for visiting (hs[i], ws[j])
    offsets = np.stack([r.integers(-d, d, (iterations, len(hs), len(ws), 2)) for r in rngs])
    img = y.permute(0, 2, 3, 1).numpy().copy()          # [N, H, W, C]
    ar = np.arange(n)
    for it in range(iterations):
        dx = offsets[:, it, :, :, 0]
        dy = offsets[:, it, :, :, 1]
        if d == 1:
            # offsets in {-1, 0}: every source is visited after its target, so
            # all reads see the values from before this iteration
            src_r = hs[None, :, None] + dy
            src_c = ws[None, None, :] + dx
            vals = img[ar[:, None, None], src_r, src_c]
            img[:, hs[0]:hs[-1] - 1:-1, ws[0]:ws[-1] - 1:-1] = vals
        else:
            for i, hh in enumerate(hs):
                for j, ww in enumerate(ws):
                    img[ar, hh, ww] = img[ar, hh + dy[:, i, j], ww + dx[:, i, j]]
    y = torch.from_numpy(img).permute(0, 3, 1, 2)
    return _to_uint8(ops.gaussian_filter(_to_float(y), sigma, mode="edge"))


@lru_cache(maxsize=32)
def _defocus_kernel(radius: float, alias: float) -> Tensor:
    """The disk kernel cropped to its support (centred, odd-sized): the zero border of the
    reference's 17x17 grid adds nothing to the correlation, nor do weights below 1e-20 of
    the largest (e.g. the 1e-45 ring of severity 5's anti-aliasing: below float32's
    resolution of the sums, so the float32 outputs are the same)."""
    k = ops.disk_kernel(radius, alias)
    centre = k.shape[0] // 2
    rr, cc = torch.nonzero(k > 1e-20 * k.max(), as_tuple=True)
    half = int(max((rr - centre).abs().max(), (cc - centre).abs().max()))
    return k[centre - half:centre + half + 1, centre - half:centre + half + 1].contiguous()


def _defocus_blur(x, c, **_):
    """``ops.filter2d`` of ``x / 255.`` with the cropped disk kernel (reflect-101 borders, float32,
    every channel of every image one group of a depthwise convolution), computed channels-last:
    the padded float32 block is written as [H, W, N*C] (the uint8 -> float32 copy does the
    transpose), where oneDNN's depthwise kernel is several times faster and sums the same products
    in the same order (tests compare it with the NCHW convolution bit for bit)."""
    radius, alias = c
    kernel = _defocus_kernel(float(radius), float(alias))
    n, ch, h, w = x.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    if not (ph < h and pw < w):      # kernel wider than the image: the generic path
        y = ops.filter2d(x.to(torch.float32).div_(255.0), kernel, mode="reflect101", dtype=torch.float32)
        return y.clamp_(0, 1).mul_(255.0).to(torch.uint8)
    # float32, as before the crop (same outputs; float64 moves severity 2 away from the reference)
    g = n * ch
    buf = torch.empty((1, g, h + 2 * ph, w + 2 * pw), memory_format=torch.channels_last)
    hwg = buf.permute(0, 2, 3, 1)[0]                                  # [Hp, Wp, G] view of the memory
    hwg[ph:ph + h, pw:pw + w].copy_(x.reshape(g, h, w).permute(1, 2, 0))
    for i in range(pw):                                               # reflect-101 columns, then rows
        hwg[ph:ph + h, pw - 1 - i] = hwg[ph:ph + h, pw + 1 + i]
        hwg[ph:ph + h, pw + w + i] = hwg[ph:ph + h, pw + w - 2 - i]
    for i in range(ph):
        hwg[ph - 1 - i] = hwg[ph + 1 + i]
        hwg[ph + h + i] = hwg[ph + h - 2 - i]
    buf.div_(255.0)
    weight = kernel.to(torch.float32).view(1, 1, *kernel.shape).expand(g, 1, *kernel.shape)
    y = F.conv2d(buf, weight, groups=g)                               # [1, G, H, W], channels-last
    y = y.clamp_(0, 1).mul_(255.0)
    out = torch.empty((n, ch, h, w), dtype=torch.uint8)
    out.view(g, h, w).permute(1, 2, 0).copy_(y[0].permute(1, 2, 0))   # truncation, as .to(uint8)
    return out


def _motion_blur(x, c, rngs, **_):
    radius, sigma = c
    angles = [r.uniform(-45, 45) for r in rngs]
    return ops.motion_blur(x, radius, sigma, angles, to_u8=True)


@lru_cache(maxsize=32)
def _zoom_blur_operator(h: int, w: int, zooms: tuple) -> Tensor:
    """[H*W, H*W] matrix of the whole zoom blur (mean of the image and its
    clipped zooms) for small images, where one matmul beats the loop."""
    op = torch.eye(h * w, dtype=torch.float64)
    for z in zooms:
        op += torch.kron(ops._clipped_zoom_axis(h, z), ops._clipped_zoom_axis(w, z))
    return (op / (len(zooms) + 1)).T.contiguous()


@lru_cache(maxsize=32)
def _zoom_blur_operator_csr(h: int, w: int, zooms: tuple) -> Tensor:
    """The transpose of :func:`_zoom_blur_operator` as a sparse CSR matrix (a few
    non-zeros per row: each output pixel mixes a small neighbourhood)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "sparse CSR support is in beta"
        return _zoom_blur_operator(h, w, zooms).T.contiguous().to_sparse_csr()


def _zoom_blur(x, c, **_):
    n, ch, h, w = x.shape
    if h * w <= 64 * 64:
        # out^T = op^T @ y^T with a sparse op^T (same sums as the dense product)
        yt = x.reshape(n * ch, h * w).T.to(torch.float64).div_(255.0)
        out = (_zoom_blur_operator_csr(h, w, tuple(c)) @ yt).T
        return _to_uint8(out.reshape(n, ch, h, w))
    y = _to_float(x)
    acc = y.clone()
    for z in c:
        acc += ops.clipped_zoom(y, z)
    return _to_uint8(acc / (len(c) + 1))


# --------------------------------------------------------------------------
# Weather
# --------------------------------------------------------------------------


def _gray(y: Tensor) -> Tensor:
    """ITU-R BT.601 luma, [N, 1, H, W]."""
    return (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).unsqueeze(1)


def _snow(x, c, rngs, **_):
    mean, std, zoom, thresh, radius, sigma, blend = c
    n, _, h, w = x.shape
    flakes = _stack([r.normal(mean, std, (h, w)) for r in rngs])          # [N, H, W]
    angles = [r.uniform(-135, -45) for r in rngs]
    if zoom != 1:               # a zoom by 1 is the identity (exactly)
        flakes = ops.clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < thresh, torch.zeros_like(flakes), flakes)
    flakes = torch.floor(flakes.clamp(0, 1) * 255)                         # 8-bit layer
    flakes = ops.motion_blur(flakes.unsqueeze(1), radius, sigma, angles, to_u8=True)
    out = torch.empty_like(x)
    for s in range(0, n, _CHUNK):       # the rest, fused chunk by chunk (same operations)
        y = x[s:s + _CHUNK].to(torch.float64).div_(255.0)
        f = flakes[s:s + _CHUNK].to(torch.float64).div_(255.0)
        lift = torch.maximum(y, _gray(y).mul_(1.5).add_(0.5)).mul_(1 - blend)
        y.mul_(blend).add_(lift).add_(f).add_(torch.flip(f, dims=(-2, -1)))
        out[s:s + _CHUNK] = y.clamp_(0, 1).mul_(255.0)
    return out


def _frost_dir(frost_dir) -> Path:
    """Directory holding the frost overlays: the argument, else ``$CL_FROST_DIR``,
    else the data folder of an installed ``imagecorruptions`` package."""
    looked = []
    candidates = []
    if frost_dir is not None:
        candidates.append(Path(frost_dir))
    else:
        if os.environ.get(FROST_ENV):
            candidates.append(Path(os.environ[FROST_ENV]))
        try:  # locate without importing the package
            import importlib.util
            spec = importlib.util.find_spec("imagecorruptions")
            if spec is not None and spec.submodule_search_locations:
                for loc in spec.submodule_search_locations:
                    candidates.append(Path(loc) / "frost")
        except (ImportError, ValueError):
            pass
    for cand in candidates:
        looked.append(str(cand))
        if all((cand / f).is_file() for f in FROST_FILES[:5]):
            return cand
    where = ", ".join(looked) if looked else f"nowhere (no frost_dir given and ${FROST_ENV} unset)"
    raise FileNotFoundError(
        "frost corruption needs the overlay images " + ", ".join(FROST_FILES[:5])
        + f"; looked in: {where}. Pass frost_dir=... or set ${FROST_ENV}. The files ship in "
        "the 'frost' folder of the PyPI package imagecorruptions (e.g. `pip download "
        "imagecorruptions --no-deps` and unzip) and in the repository hendrycks/robustness "
        "(ImageNet-C/create_c/)."
    )


def _resize_bilinear_u8(img: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear resize of an [H, W, 3] uint8 image by ``scale`` with half-pixel
    centres and no anti-aliasing (OpenCV ``INTER_LINEAR`` convention)."""
    if scale == 1.0:
        return img

    def axis(n_in):
        n_out = int(round(n_in * scale))
        pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) / scale - 0.5
        return ops.linear_interp_matrix(pos, n_in, clamp_start=True)

    t = torch.from_numpy(img).to(torch.float64).permute(2, 0, 1)
    out = axis(img.shape[0]) @ t @ axis(img.shape[1]).T
    return torch.floor(out + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@lru_cache(maxsize=8)
def _frost_images(directory: str, scale: float) -> tuple:
    from PIL import Image

    out = []
    for name in FROST_FILES[:5]:
        with Image.open(os.path.join(directory, name)) as im:
            arr = np.array(im.convert("RGB"))
        out.append(_resize_bilinear_u8(arr, scale))
    return tuple(out)


def _frost(x, c, rngs, extra, frost_dir=None, **_):
    w_img, w_frost = c
    n, _, h, w = x.shape
    frosts = _frost_images(str(_frost_dir(frost_dir)), float(extra["frost_scale"]))
    crops = []
    for r in rngs:
        f = frosts[int(r.integers(len(frosts)))]
        if f.shape[0] <= h or f.shape[1] <= w:  # image larger than the overlay
            s = 1.01 * max((h + 1) / f.shape[0], (w + 1) / f.shape[1])
            f = _resize_bilinear_u8(f, s)
        top = int(r.integers(0, f.shape[0] - h))
        left = int(r.integers(0, f.shape[1] - w))
        crops.append(f[top:top + h, left:left + w])
    overlay = _stack(crops).permute(0, 3, 1, 2).to(torch.float64)
    y = w_img * x.to(torch.float64) + w_frost * overlay
    return y.clamp(0, 255).to(torch.uint8)


def _fog(x, c, rngs, extra, **_):
    strength, decay = c
    n, _, h, w = x.shape
    size = max(int(extra["fog_mapsize"]), 1 << int(np.ceil(np.log2(max(h, w)))))
    fog = torch.from_numpy(ops.plasma_fractal(rngs, size, decay)[:, :h, :w]).unsqueeze(1)
    # peak of x / 255 is peak(x) / 255 (division is monotone)
    peak = x.reshape(n, -1).amax(1).to(torch.float64).div_(255.0).view(n, 1, 1, 1)
    out = torch.empty_like(x)
    for s in range(0, n, _CHUNK):       # ((x/255 + strength*fog) * peak) / (peak + strength), in place
        y = x[s:s + _CHUNK].to(torch.float64).div_(255.0).add_(fog[s:s + _CHUNK].mul(strength))
        y.mul_(peak[s:s + _CHUNK]).div_(peak[s:s + _CHUNK] + strength)
        out[s:s + _CHUNK] = y.clamp_(0, 1).mul_(255.0)
    return out


def _spatter(x, c, rngs, **_):
    """Water drops (severities with ``mud == 0``) or mud splashes."""
    mean, std, sigma, thresh, intensity, mud = c
    n, _, h, w = x.shape
    liquid = torch.from_numpy(_normal_fields(rngs, mean, std, (h, w)))
    liquid = ops.gaussian_filter(liquid, sigma, mode="edge")
    liquid.masked_fill_(liquid < thresh, 0.0)
    if not mud:
        liquid8 = liquid.clamp(0, 1).mul_(255).floor_()
        edges = ops.canny(liquid8, 50, 150)
        dist = ops.distance_to_mask(edges, 20.0)
        dist = torch.floor(ops.box_blur3(dist))
        dist = ops.equalize_hist(dist.to(torch.uint8)).to(torch.float32)
        # integer kernel on 8-bit values: exact as shifted adds (|sums| <= 9 * 255, exact in
        # float32); the results are integers, so the rounding floor(v + 0.5) leaves them as is
        dist = ops.correlate3_int(dist, [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], "reflect101")
        dist = ops.box_blur3(dist.clamp_(0, 255).to(torch.float64))
        m = liquid8.mul_(dist)
        peak = m.amax(dim=(1, 2), keepdim=True)
        m.div_(torch.where(peak > 0, peak, torch.ones_like(peak)))      # all-zero maps stay as they are
        m = m.mul_(intensity).unsqueeze(1)
        colour = torch.tensor([175, 238, 238], dtype=torch.float64).view(1, 3, 1, 1) / 255.0
    else:
        m = ops.gaussian_filter((liquid > thresh).to(torch.float64), intensity, mode="edge")
        m = m.masked_fill_(m < 0.8, 0.0).unsqueeze(1)
        colour = torch.tensor([63, 42, 20], dtype=torch.float64).view(1, 3, 1, 1) / 255.0
    out = torch.empty_like(x)
    for s in range(0, n, _CHUNK):       # blend chunk by chunk, same operations
        y = x[s:s + _CHUNK].to(torch.float64).div_(255.0)
        mc = m[s:s + _CHUNK]
        if mud:                         # y * (1 - m) + colour * m
            y.mul_(1 - mc).add_(colour * mc)
        else:                           # y + m * colour
            y.add_(mc * colour)
        out[s:s + _CHUNK] = y.clamp_(0, 1).mul_(255.0)
    return out


# --------------------------------------------------------------------------
# Digital
# --------------------------------------------------------------------------


_HSV_CHUNK = 16384                                        # pixels per block (L2-sized float64 arrays)
# output channel r, g, b for hue sector 0..5 as an index into the candidates (v, q, p, t)
_SECTOR_PICK = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))
# the same as 4-bit fields of one word per output channel (field k: sector k; sector 6 = 0)
_SECTOR_BYTE = [np.uint32(sum(p << (4 * k) for k, p in enumerate(row + row[:1]))) for row in _SECTOR_PICK]


def _hsv_adjust(x, channel: int, scale: float, offset: float) -> Tensor:
    """uint8(clip(hsv2rgb(hsv'), 0, 1) * 255) where hsv' is skimage's ``rgb2hsv(x / 255.)``
    with channel ``channel`` (1 = S, 2 = V) replaced by ``clip(value * scale + offset, 0, 1)``.

    The same float64 operations as skimage, in the same order (so the same results), on
    blocks of the channel-last pixel array: one pass for the whole batch. Two steps are
    written differently with the same values: the hue's ``% 1`` (an addition of 1 where the
    raw hue is negative, the only case it changes) and hsv2rgb's pick of (v, q, p, t) per
    sector, done on the four candidates' uint8 values (packed into one uint32, one byte per
    candidate) instead of on the picked floats (the uint8 conversion is elementwise). Checked
    against the previous code on all 2^24 colours for both parameter tables."""
    n, ch, h, w = x.shape
    a = _hwc(x).reshape(-1, 3)
    out = np.empty_like(a)
    for s0 in range(0, a.shape[0], _HSV_CHUNK):
        blk = a[s0:s0 + _HSV_CHUNK]
        m = blk.shape[0]
        r, g, b = np.divide(blk.T, 255.0)            # 3 x [m] float64, as np.array(img) / 255.
        v = np.maximum(np.maximum(r, g), b)
        delta = v - np.minimum(np.minimum(r, g), b)
        flat = delta == 0.0
        # skimage: (g - b) / delta where r is the max, 2 + (b - r) / delta where g is, 4 +
        # (r - g) / delta where b is (later cases win); one division of the selected numerator
        # (x + 0.0 == x, and a + b == b + a, exactly)
        g_max, b_max = g == v, b == v
        num = g - b
        np.copyto(num, b - r, where=g_max)
        np.copyto(num, r - g, where=b_max)
        base = g_max * 2.0
        np.copyto(base, 4.0, where=b_max)
        with np.errstate(invalid="ignore", divide="ignore"):
            sat = delta / v
            hue = num / delta
        hue += base
        hue /= 6.0
        # np.remainder(hue, 1.0): hue is in [-1/6, 5/6] (or nan where flat), so the remainder
        # is hue itself, or fl(hue + 1) where negative (numpy's fmod, then + 1 for the sign)
        np.add(hue, 1.0, out=hue, where=hue < 0)
        hue[flat] = 0.0
        sat[flat] = 0.0
        if channel == 1:
            sat *= scale
            sat += offset
            np.clip(sat, 0, 1, out=sat)
        else:
            v = v * scale
            v += offset
            np.clip(v, 0, 1, out=v)
        f = hue * 6
        sector = np.floor(f)
        f -= sector
        cand = np.empty((4, m))                                        # (v, q, p, t) per pixel
        cand[0] = v
        np.multiply(v, 1 - f * sat, out=cand[1])
        np.multiply(v, 1 - sat, out=cand[2])
        np.multiply(v, 1 - (1 - f) * sat, out=cand[3])
        # uint8(clip(., 0, 1) * 255) of the 4 candidates (elementwise, so the same as of the
        # picked ones), packed 4 to a uint32 (byte k = candidate k), then each output channel
        # picks byte _SECTOR_BYTE[ch] >> (4 * sector) & 3 (sector 6, from hue * 6 rounding up
        # to 6, acts as sector 0, as the reference's ``% 6``)
        np.clip(cand, 0, 1, out=cand)
        cand *= 255
        np.floor(cand, out=cand)                    # truncation (as np.uint8): values in [0, 255]
        packed = cand[3] * 16777216.0               # exact integer arithmetic (< 2^32)
        for k, weight in ((2, 65536.0), (1, 256.0)):
            cand[k] *= weight
            packed += cand[k]
        packed += cand[0]
        packed = packed.astype(np.uint32)
        sec4 = sector.astype(np.uint32)
        sec4 <<= 2
        o = out[s0:s0 + m]
        for k in range(3):
            sh = np.right_shift(_SECTOR_BYTE[k], sec4)
            sh &= 3
            sh <<= 3
            np.right_shift(packed, sh, out=sh)
            o[:, k] = sh                                               # low byte
    return _from_hwc(out.reshape(n, -1), x.shape)


def _brightness(x, c, **_):
    return _hsv_adjust(x, 2, 1.0, float(c))


def _saturate(x, c, **_):
    factor, offset = c
    return _hsv_adjust(x, 1, float(factor), float(offset))


def _contrast(x, c, **_):
    """Per image and channel, an affine map of the levels around their mean: one 256-entry
    table per (image, channel) computed with the reference's float64 operations, then
    applied by lookup.

    Block by block (small reused buffers, no int64 copy of the whole batch): the channel
    sums are exact (float32 products with ones: every partial sum is an integer below 2^24,
    exact in any order, when ``255 * H * W < 2^24``; else int32 sums), the mean is the sum
    divided by the pixel count, then by 255, as before."""
    n, ch, h, w = x.shape
    p = h * w
    a = _hwc(x).reshape(n, p * ch)
    v = np.arange(256, dtype=np.float64) / 255.0
    out = torch.empty((n, p * ch), dtype=torch.uint8)
    # flat index of (channel, level) in an image's [C, 256] table: level + 256 * channel
    off = np.tile(np.arange(0, ch * 256, 256), p)
    g_max = min(n, _CHUNK)
    ones = np.ones(p, dtype=np.float32) if 255 * p < 1 << 24 else None
    idx = np.empty((g_max, p * ch), dtype=np.int64)
    lut = np.empty((g_max, ch, 256))
    lut8 = torch.empty((g_max, ch * 256), dtype=torch.uint8)
    for s in range(0, n, _CHUNK):
        g = min(_CHUNK, n - s)
        blk = a[s:s + g]
        if ones is not None:
            sums = np.matmul(ones, blk.reshape(g, p, ch).astype(np.float32))
        else:
            sums = torch.from_numpy(blk).view(g, p, ch).sum(1, dtype=torch.int32).numpy()
        m = (sums.astype(np.float64) / float(p) / 255.0)[:, :, None]        # [g, C, 1]
        t = lut[:g]
        np.subtract(v, m, out=t)                    # (v - mean) * c + mean, as the reference
        t *= c
        t += m
        np.clip(t, 0, 1, out=t)
        t *= 255
        lut8[:g].numpy().reshape(g, ch, 256)[...] = t                     # truncation, as np.uint8
        np.add(blk, off, out=idx[:g])
        torch.gather(lut8[:g], 1, torch.from_numpy(idx[:g]), out=out[s:s + g])
    return _from_hwc(out.numpy(), x.shape)


def _elastic_transform(x, c, rngs, **_):
    """Random affine warp (reflect-101 borders) followed by a smooth random
    displacement field (symmetric borders), both with bilinear sampling."""
    alpha, sigma, jitter = c
    n, _, h, w = x.shape
    cy, cx = float(h // 2), float(w // 2)
    sq = min(h, w) // 3
    # source points (x, y) as in the reference: centre +- square size
    src = np.array([[cy + sq, cx + sq], [cy + sq, cx - sq], [cy - sq, cx - sq]], dtype=np.float32)
    rows = torch.arange(h, dtype=torch.float64).view(1, h, 1).expand(1, h, w)
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, w).expand(1, h, w)
    # per image, in the reference's order: the 3 x 2 jitters, then the two
    # [H, W] fields of uniforms in [-1, 1) (one call draws both fields)
    # (numpy's uniform(-1, 1) is -1 + 2 * u for its double u: the u are drawn in place, then
    # mapped once, with the same two roundings)
    # (with alpha == 0 the fields are not used and, drawn last from the image's own stream,
    # affect nothing: not drawn; other stream objects, e.g. replayed reference draws, still are)
    jit = np.empty((n,) + src.shape)
    fields = np.empty((n, 2, h, w))
    fast = _is_generator(rngs)
    for k, r in enumerate(rngs):
        jit[k] = r.uniform(-jitter, jitter, src.shape)
        if alpha == 0 and fast:
            continue
        if fast:
            r.random(out=fields[k])
        else:
            fields[k] = r.uniform(-1, 1, (2, h, w))
    if fast and alpha != 0:
        fields *= 2.0
        fields += -1.0
    dst = src + jit.astype(np.float32)                                     # [N, 3, 2]
    # affine A with dst = A @ [p, 1]; we need the inverse map dst -> src
    lhs = np.broadcast_to(np.c_[src.astype(np.float64), np.ones(3)], (n, 3, 3))
    a = np.swapaxes(np.linalg.solve(lhs, dst.astype(np.float64)), 1, 2)    # [N, 2, 3]
    full = np.concatenate([a, np.broadcast_to(np.array([[0.0, 0.0, 1.0]]), (n, 1, 3))], axis=1)
    inv = torch.from_numpy(np.linalg.inv(full)[:, :2])                      # [N, 2, 3]
    disp = torch.from_numpy(fields)                                         # [N, 2, H, W]
    out = torch.empty_like(x)
    for s in range(0, n, _CHUNK):       # chunk by chunk (cache-sized), same operations
        e = min(s + _CHUNK, n)
        iv = inv[s:e]
        # inverse-map output pixel (x=col, y=row); positions quantised to 1/32 px
        # (the products on one row / column, broadcast: the same values as on the full grid)
        colv, rowv = cols[:, :1, :], rows[:, :, :1]
        sx = iv[:, 0, 0, None, None] * colv + iv[:, 0, 1, None, None] * rowv + iv[:, 0, 2, None, None]
        sy = iv[:, 1, 0, None, None] * colv + iv[:, 1, 1, None, None] * rowv + iv[:, 1, 2, None, None]
        sx = torch.round(sx.mul_(32)).div_(32)
        sy = torch.round(sy.mul_(32)).div_(32)
        yc = x[s:e].to(torch.float64).div_(255.0)
        if alpha == 0:  # no displacement: the second resampling is the identity
            out[s:e] = ops.bilinear_sample(yc, sy, sx, "reflect101", chunk=_CHUNK, to_u8=True)
            continue
        yc = ops.bilinear_sample(yc, sy, sx, "reflect101", chunk=_CHUNK)
        d = ops.gaussian_filter(disp[s:e], sigma, mode="symmetric", truncate=3.0).mul_(alpha)
        out[s:e] = ops.bilinear_sample(yc, rows + d[:, 1], cols + d[:, 0], "symmetric", chunk=_CHUNK,
                                       to_u8=True)
    return out


@lru_cache(maxsize=16)
def _box_matrix(n_in: int, n_out: int) -> Tensor:
    return ops.box_resize_matrix(n_in, n_out)


@lru_cache(maxsize=16)
def _pixelate_taps(n: int, small: int):
    """Down-then-up box resampling along one axis as two index lists ``(i0, i1)``: output
    pixel ``k`` is the rounded mean of input pixels ``i0[k]`` and ``i1[k]`` (equal for a
    one-pixel support), or None when the resampling is not of that form (then the matrix
    path is used)."""
    down, up = _box_matrix(n, small), _box_matrix(small, n)
    if (up > 0).sum(1).max() != 1 or (down > 0).sum(1).max() > 2:
        return None
    src = up.argmax(1)                                       # upsampling copies one pixel
    first = torch.stack([torch.nonzero(r)[0, 0] for r in down])
    last = torch.stack([torch.nonzero(r)[-1, 0] for r in down])
    return first[src].numpy(), last[src].numpy()


def _avg_round_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """floor((a + b + 1) / 2) of uint8 arrays without overflow (PIL's rounding of a
    two-pixel box mean): (a | b) - ((a ^ b) >> 1)."""
    half = np.bitwise_xor(a, b)
    half >>= 1
    out = np.bitwise_or(a, b)
    out -= half
    return out


def _pixelate(x, c, **_):
    """Box-downsample to ``int(size * c)`` and box-upsample back (PIL ``BOX``
    semantics, horizontal pass first, 8-bit rounding after each pass).

    The upsampling copies pixels, so it commutes with the other axis' downsampling and the
    whole corruption is a horizontal then a vertical "rounded mean of two pixels" (uint8
    arithmetic on the channel-last array) when every box covers at most two pixels (all
    CIFAR-10-C severities)."""
    n, ch, h, w = x.shape
    sh, sw = int(h * c), int(w * c)
    cols, rows = _pixelate_taps(w, sw), _pixelate_taps(h, sh)
    if cols is not None and rows is not None:       # per channel, so in the input's own memory order
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        a = x.permute(0, 2, 3, 1).numpy() if nhwc else x.contiguous().numpy()
        ax_h, ax_w = (1, 2) if nhwc else (2, 3)
        y = _avg_round_up(np.take(a, cols[0], axis=ax_w), np.take(a, cols[1], axis=ax_w))
        y = _avg_round_up(np.take(y, rows[0], axis=ax_h), np.take(y, rows[1], axis=ax_h))
        y = torch.from_numpy(y)
        return y.permute(0, 3, 1, 2) if nhwc else y
    y = x.to(torch.float64)

    def rnd(t):
        return torch.floor(t + 0.5).clamp(0, 255)

    y = rnd(y @ _box_matrix(w, sw).T)
    y = rnd(_box_matrix(h, sh) @ y)
    y = rnd(y @ _box_matrix(sw, w).T)
    y = rnd(_box_matrix(sh, h) @ y)
    return y.to(torch.uint8)


def _jpeg_compression(x, c, **_):
    """JPEG encode + decode at quality ``c``: torchvision's libjpeg calls on the whole batch
    when available (bit-identical to PIL's on the golden set), else PIL image by image."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
    except ImportError:
        encode_jpeg = None
    if encode_jpeg is not None and not _JPEG_WITH_PIL:
        with warnings.catch_warnings():           # torchvision 0.29 announces a future move
            warnings.simplefilter("ignore", DeprecationWarning)
            data = encode_jpeg(list(x), quality=int(c))
            return torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))
    from PIL import Image

    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = []
    for img in arr:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.array(im.convert("RGB")))
    return _stack(out).permute(0, 3, 1, 2).contiguous()


_JPEG_WITH_PIL = False   # tests set it to compare the two paths


_FUNCS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "glass_blur": _glass_blur,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "spatter": _spatter,
    "brightness": _brightness,
    "saturate": _saturate,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
assert set(_FUNCS) == set(ALL_CORRUPTIONS)
#: corruptions whose function accepts any memory layout (a channels-last input is not copied)
_ANY_LAYOUT = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "contrast", "pixelate",
               "jpeg_compression", "brightness", "saturate", "gaussian_blur")


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def corrupt(
    images: Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    params: Optional[str] = None,
    frost_dir: Optional[Union[str, os.PathLike]] = None,
    indices: Optional[Iterable[int]] = None,
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch of images.

    Args:
        images: uint8 tensor ``[N, 3, H, W]`` (a single ``[3, H, W]`` image is
            also accepted and returned without the batch dimension).
        name: one of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
        severity: integer in 1..5.
        seed: non-negative integer; together with each image's index it fixes
            all random choices.
        params: ``"cifar"`` (CIFAR-10-C settings, for 32x32) or
            ``"imagenet"`` (ImageNet-C settings, for 224x224); by default
            ``"cifar"`` for 32x32 inputs and ``"imagenet"`` otherwise.
        frost_dir: folder with ``frost1.png`` ... ``frost5.jpg`` (only for
            ``frost``); defaults to ``$CL_FROST_DIR`` or the data folder of
            an installed ``imagecorruptions`` package.
        indices: dataset indices of the images (default ``0..N-1``); the
            random stream of each image depends only on ``seed`` and its index.

    Returns:
        uint8 tensor of the same shape as ``images`` (on the same device and in the
        same memory layout: a channels-last input gives a channels-last output).
    """
    if name not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; valid choices: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5 (valid choices: 1, 2, 3, 4, 5), got {severity!r}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must have dtype torch.uint8, got {images.dtype}")
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W] or [3, H, W], got {tuple(images.shape)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, _, h, w = x.shape
    table_name = resolve_params(params, h, w)
    table, extra = PARAM_TABLES[table_name]
    if indices is None:
        idx = range(n)
    else:
        idx = indices if isinstance(indices, range) else [int(i) for i in indices]
        if len(idx) != n:
            raise ValueError(f"indices has {len(idx)} entries for {n} images")
    device = x.device
    if n == 0:
        return images.clone()
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    xc = x.detach().cpu()
    if name not in _ANY_LAYOUT:
        xc = xc.contiguous()
    rngs = _rngs(seed, name, severity, idx) if name in RANDOM_CORRUPTIONS else None
    out = _FUNCS[name](xc, table[name][severity - 1], rngs=rngs, extra=extra, frost_dir=frost_dir)
    out = out.contiguous(memory_format=layout).to(device)     # the input's memory layout
    return out[0] if single else out
