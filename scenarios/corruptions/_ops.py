"""Low-level, batched image operations used by :mod:`scenarios.corruptions`.

All functions work on float tensors of shape ``[N, C, H, W]`` (or
``[N, H, W]`` where noted) with values in ``[0, 1]`` unless stated otherwise.
They are written from the mathematical definitions of the operations used by
Hendrycks & Dietterich (2019, arXiv:1903.12261) -- scipy/skimage gaussian
filtering, OpenCV filtering, ImageMagick's motion blur, PIL's box resampling,
diamond-square plasma fractals, Canny edges -- without depending on those
libraries.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------
# Border handling
# --------------------------------------------------------------------------


def border_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map (possibly out-of-range) integer indices into ``[0, n)``.

    ``mode``: ``"edge"`` (aaa|abcd|ddd, scipy ``nearest``, OpenCV
    ``BORDER_REPLICATE``), ``"reflect101"`` (cb|abcd|cb, scipy ``mirror``,
    OpenCV ``BORDER_REFLECT_101``) or ``"symmetric"`` (ba|abcd|dc, scipy
    ``reflect``, OpenCV ``BORDER_REFLECT``).
    """
    if mode == "edge" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "reflect101":
        period = 2 * n - 2
        i = torch.remainder(idx, period)
        return torch.where(i >= n, period - i, i)
    if mode == "symmetric":
        period = 2 * n
        i = torch.remainder(idx, period)
        return torch.where(i >= n, period - 1 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad2d(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` by ``ph`` rows / ``pw`` columns."""
    h, w = x.shape[-2:]
    native = {"edge": "replicate", "reflect101": "reflect"}.get(mode)
    if native and (mode == "edge" or (ph < h and pw < w)):
        y = F.pad(x.reshape(-1, 1, h, w), (pw, pw, ph, ph), mode=native)
        return y.reshape(*x.shape[:-2], h + 2 * ph, w + 2 * pw)
    ri = border_index(torch.arange(-ph, h + ph), h, mode)
    ci = border_index(torch.arange(-pw, w + pw), w, mode)
    return x.index_select(-2, ri).index_select(-1, ci)


# --------------------------------------------------------------------------
# Linear filtering
# --------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised sampled gaussian of radius ``int(truncate * sigma + 0.5)``
    (the discretisation used by ``scipy.ndimage.gaussian_filter``)."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


def filter_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """[n, n] matrix ``M`` with ``(M @ v)[i] = sum_t kernel[t] * v[b(i + t - r)]``:
    1-D correlation with an odd kernel of radius ``r`` where out-of-range
    samples are folded back with :func:`border_index` (works for kernels
    larger than the signal)."""
    k = kernel.to(torch.float64).flatten()
    r = (k.numel() - 1) // 2
    i = torch.arange(n).view(n, 1)
    t = torch.arange(k.numel()).view(1, -1)
    j = border_index(i + t - r, n, mode)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, j, k.expand(n, -1).contiguous())
    return m


def filter_separable(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of ``x`` ([..., H, W]) with ``kernel`` along
    rows and columns, with the given border ``mode`` (as two matrix products,
    which also handles kernels wider than the image)."""
    h, w = x.shape[-2:]
    key = (tuple(kernel.to(torch.float64).flatten().tolist()), mode, x.dtype)
    mh = _filter_matrix_cached(h, *key)
    mw = mh if w == h else _filter_matrix_cached(w, *key)
    return mh @ x @ mw.T


@lru_cache(maxsize=64)
def _filter_matrix_cached(n: int, taps: tuple, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """:func:`filter_matrix` of the kernel ``taps`` in ``dtype``, cached (read-only use)."""
    return filter_matrix(n, torch.tensor(taps, dtype=torch.float64), mode).to(dtype)


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "edge",
                    truncate: float = 4.0) -> torch.Tensor:
    """Spatial gaussian blur (per channel), like ``skimage.filters.gaussian``
    (default border ``edge`` == scipy ``nearest``).  ``sigma == 0`` is the
    identity."""
    if sigma <= 0:
        return x
    return filter_separable(x, gaussian_kernel1d(sigma, truncate), mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101",
             dtype: torch.dtype = None) -> torch.Tensor:
    """Correlate each channel of ``x`` ([..., H, W]) with a 2-D odd-sized
    ``kernel`` (OpenCV ``filter2D`` semantics: no flip, anchor at centre).
    Computed in ``dtype``; by default large kernels (more than 9 taps) in float32
    (much faster on CPU), small ones in the dtype of ``x``."""
    shape = x.shape
    kh, kw = kernel.shape
    if dtype is None:
        dtype = torch.float32 if kh * kw > 9 else x.dtype
    if dtype != torch.float32:                  # float64: a batch of single-channel images
        y = x.reshape(-1, 1, shape[-2], shape[-1]).to(dtype)
        y = pad2d(y, kh // 2, kw // 2, mode)
        y = F.conv2d(y, kernel.to(dtype).view(1, 1, kh, kw))
        return y.reshape(shape).to(x.dtype)
    # float32: every channel of every image as one group of a depthwise convolution, much
    # faster on CPU than a batch of single-channel images
    y = x.reshape(1, -1, shape[-2], shape[-1]).to(dtype)
    y = pad2d(y, kh // 2, kw // 2, mode)
    weight = kernel.to(dtype).view(1, 1, kh, kw).expand(y.shape[1], 1, kh, kw)
    y = F.conv2d(y, weight, groups=y.shape[1])
    return y.reshape(shape).to(x.dtype)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter with reflect-101 borders (OpenCV ``blur(x, (3, 3))``)."""
    return filter_separable(x, torch.full((3,), 1.0 / 3.0, dtype=torch.float64), "reflect101")


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """Anti-aliased, normalised disk used for defocus blur.

    An aliased disk ``x^2 + y^2 <= r^2`` on a grid of half-width
    ``max(8, r)`` is normalised to sum 1 and smoothed by a 3x3 (5x5 for
    ``r > 8``) gaussian of sigma ``alias_blur`` with reflect-101 borders.
    """
    half = 8 if radius <= 8 else int(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).to(torch.float64)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-(g ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    return filter_separable(disk, g, "reflect101")


# --------------------------------------------------------------------------
# Motion blur (ImageMagick ``-motion-blur radius x sigma + angle`` model)
# --------------------------------------------------------------------------


def motion_taps(radius: float, sigma: float, angle_deg: float):
    """Weights and integer (row, col) offsets of ImageMagick's motion blur.

    ImageMagick samples ``width = 2 * ceil(radius) + 1`` pixels along a ray
    starting at the pixel and going in direction ``angle`` (degrees,
    clockwise from the +x axis with y pointing down), weighting the i-th
    sample by a one-sided gaussian ``exp(-i^2 / (2 sigma^2))`` (normalised).
    Sample positions are rounded half-down to integer offsets.
    """
    width = int(2 * math.ceil(radius) + 1) if radius > 1e-12 else 1
    s = max(abs(float(sigma)), 1e-12)
    i = np.arange(width, dtype=np.float64)
    w = np.exp(-(i ** 2) / (2 * s * s))
    w /= w.sum()
    a = math.radians(angle_deg)
    dcol = np.ceil(i * math.cos(a) - 0.5).astype(np.int64)
    drow = np.ceil(i * math.sin(a) - 0.5).astype(np.int64)
    return w, drow, dcol


def motion_offsets(radius: float, sigma: float, angles: Sequence[float]):
    """:func:`motion_taps` for many angles at once: ``(weights [T], drow [N, T],
    dcol [N, T])`` (the weights do not depend on the angle)."""
    w, _, _ = motion_taps(radius, sigma, 0.0)
    i = np.arange(len(w), dtype=np.float64)
    rad = [math.radians(a) for a in angles]
    cos = np.array([math.cos(a) for a in rad], dtype=np.float64).reshape(-1, 1)
    sin = np.array([math.sin(a) for a in rad], dtype=np.float64).reshape(-1, 1)
    dcol = np.ceil(i * cos - 0.5).astype(np.int64)
    drow = np.ceil(i * sin - 0.5).astype(np.int64)
    return w, drow, dcol


def motion_blur(x: torch.Tensor, radius: float, sigma: float,
                angles: Sequence[float], chunk: int = 64,
                to_u8: bool = False) -> torch.Tensor:
    """Per-image motion blur of ``x`` ([N, C, H, W]) with one angle per image.

    Out-of-image samples use the nearest edge pixel (ImageMagick's default
    virtual-pixel method).  Integer inputs are blurred in float64.  With
    ``to_u8=True`` the result is quantised like :func:`imagemagick_to_u8`
    and returned as uint8 (same values, computed chunk by chunk).

    The tap weights are the same for every image; only the integer offsets of
    the taps depend on the angle.  Images are sorted by angle and processed in
    chunks of ``chunk``; within a chunk, each tap is a run of images sharing
    one offset, applied as a weighted add of a shifted view of the padded
    chunk (no per-pixel gathers).  Taps are accumulated in order, from zero.
    """
    n, c, h, w = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float64
    out = torch.empty(n, c, h, w, dtype=torch.uint8 if to_u8 else dtype)
    if n == 0:
        return out
    wts, drow, dcol = motion_offsets(radius, sigma, angles)
    order = np.argsort(np.asarray(angles, dtype=np.float64), kind="stable")
    for s in range(0, n, chunk):
        idx = order[s:s + chunk]
        g = len(idx)
        dr, dc = drow[idx], dcol[idx]
        r_lo, r_hi = min(int(dr.min()), 0), max(int(dr.max()), 0)
        c_lo, c_hi = min(int(dc.min()), 0), max(int(dc.max()), 0)
        it = torch.from_numpy(idx)
        xs = x.index_select(0, it).to(dtype)
        if r_lo or r_hi or c_lo or c_hi:
            xp = F.pad(xs.reshape(g * c, 1, h, w), (-c_lo, c_hi, -r_lo, r_hi), mode="replicate")
            xp = xp.reshape(g, c, h - r_lo + r_hi, w - c_lo + c_hi)
        else:
            xp = xs
        acc = torch.zeros(g, c, h, w, dtype=dtype)
        key = (dr - r_lo) * (w - c_lo + c_hi + 1) + (dc - c_lo)           # [g, T]
        for t in range(len(wts)):
            kt = key[:, t]
            cuts = np.flatnonzero(kt[1:] != kt[:-1]) + 1
            bounds = [0] + cuts.tolist() + [g]
            wt = float(wts[t])
            for b0, b1 in zip(bounds[:-1], bounds[1:]):
                r0 = int(dr[b0, t]) - r_lo
                c0 = int(dc[b0, t]) - c_lo
                acc[b0:b1].add_(xp[b0:b1, :, r0:r0 + h, c0:c0 + w], alpha=wt)
        if to_u8:
            acc = _imagemagick_quantize_(acc).to(torch.uint8)
        out.index_copy_(0, it, acc)
    return out


def imagemagick_to_u8(y: torch.Tensor) -> torch.Tensor:
    """Quantise 0..255 floats the way ImageMagick (Q16 build) writes 8-bit
    output: round to a 16-bit quantum (``v * 257``), then integer-divide by
    257.  This is a truncation with a tiny tolerance, not a rounding."""
    return _imagemagick_quantize_(y.clone())


def _imagemagick_quantize_(y: torch.Tensor) -> torch.Tensor:
    """:func:`imagemagick_to_u8` in place on float ``y`` (same operations)."""
    return y.mul_(257.0).add_(0.5).floor_().div_(257.0).floor_().clamp_(0, 255)


# --------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------


def linear_interp_matrix(pos: torch.Tensor, n_in: int, clamp_start: bool = False) -> torch.Tensor:
    """[len(pos), n_in] float64 matrix of linear interpolation: row ``o`` mixes
    inputs ``floor(pos[o])`` and the next one (the last input repeats past the
    end).  ``clamp_start=True`` first clamps positions below 0 to 0, so the
    edge rows copy the first input (half-pixel grids, OpenCV ``INTER_LINEAR``);
    corner-aligned grids have no negative positions and leave it off."""
    if clamp_start:
        pos = pos.clamp(min=0)
    i0 = pos.floor().long().clamp(0, n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    f = pos - i0
    m = torch.zeros(len(pos), n_in, dtype=torch.float64)
    m[torch.arange(len(pos)), i0] += 1 - f
    m[torch.arange(len(pos)), i1] += f
    return m


def _linear_axis(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix of linear interpolation with corner-aligned grids
    (output ``o`` samples input ``o * (n_in - 1) / (n_out - 1)``, the
    convention of ``scipy.ndimage.zoom``)."""
    if n_out == 1 or n_in == 1:
        pos = torch.zeros(n_out, dtype=torch.float64)
    else:
        pos = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
    return linear_interp_matrix(pos, n_in)


def _clipped_zoom_axis(n: int, zoom: float) -> torch.Tensor:
    """[n, n] matrix: crop the centre ``ceil(n / zoom)`` samples, stretch them
    linearly by ``zoom`` and keep the central ``n`` outputs."""
    crop = int(math.ceil(n / zoom))
    top = (n - crop) // 2
    n_out = int(round(crop * zoom))
    m = _linear_axis(crop, n_out)
    trim = (n_out - n) // 2
    full = torch.zeros(n, n, dtype=torch.float64)
    full[:, top:top + crop] = m[trim:trim + n]
    return full


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre of ``x`` ([..., H, W]) by ``zoom`` >= 1 with
    bilinear interpolation, keeping the size."""
    h, w = x.shape[-2:]
    mh = _clipped_zoom_axis(h, zoom).to(x.dtype)
    mw = _clipped_zoom_axis(w, zoom).to(x.dtype)
    return mh @ x @ mw.T


def box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix of PIL's ``BOX`` resampling along one axis.

    The support of output pixel ``i`` is the interval of width
    ``max(scale, 1)`` centred at ``(i + 0.5) * scale`` (``scale = n_in /
    n_out``); the input pixels whose centres fall in it (half-open) get equal
    weight.
    """
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j - centre + 0.5) / fscale
            if -0.5 <= u < 0.5:
                m[i, j] = 1.0
        if m[i].sum() == 0:  # cannot happen for BOX, kept for safety
            m[i, min(int(centre), n_in - 1)] = 1.0
        m[i] /= m[i].sum()
    return m


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    mode: str, chunk: int = 64, to_u8: bool = False) -> torch.Tensor:
    """Sample ``x`` ([N, C, H, W]) at fractional positions ``rows``/``cols``
    ([N, H', W']) with bilinear interpolation; neighbours outside the image
    are mapped back with :func:`border_index`.

    Implementation: images are processed in chunks of ``chunk``; the
    border-mapped row and column offsets of the neighbours come from small
    lookup tables (:func:`border_index` of the range the chunk needs), and each
    of the four taps is one gather shared by all channels.  ``to_u8=True`` returns ``uint8(clamp(v, 0, 1) * 255)``
    (truncation) instead of the float samples.
    """
    n, c, h, w = x.shape
    out_shape = rows.shape[1:]
    L = out_shape.numel()
    out = torch.empty((n, c) + tuple(out_shape), dtype=torch.uint8 if to_u8 else x.dtype)
    if n == 0:
        return out
    rows = rows.reshape(n, 1, L)
    cols = cols.reshape(n, 1, L)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        g = e - s
        rf = torch.floor(rows[s:e])
        cf = torch.floor(cols[s:e])
        f_r = (rows[s:e] - rf).to(x.dtype)
        f_c = (cols[s:e] - cf).to(x.dtype)
        rc, cc = rf.long(), cf.long()
        # border-mapped flat offsets of the neighbour rows / columns, via small tables
        r_lo, r_hi = min(int(rc.min()), 0), max(int(rc.max()) + 1, h - 1)
        c_lo, c_hi = min(int(cc.min()), 0), max(int(cc.max()) + 1, w - 1)
        row_off = border_index(torch.arange(r_lo, r_hi + 1), h, mode) * w
        col_off = border_index(torch.arange(c_lo, c_hi + 1), w, mode)
        rr, cq = (rc - r_lo).view(-1), (cc - c_lo).view(-1)

        def look(table, i):
            return table.index_select(0, i).view(g, 1, L)

        r_top, r_bot = look(row_off, rr), look(row_off, rr + 1)
        c_left, c_right = look(col_off, cq), look(col_off, cq + 1)
        i00, i01 = r_top + c_left, r_top + c_right
        i10, i11 = r_bot + c_left, r_bot + c_right
        flat = x[s:e].reshape(g, c, h * w)

        def tap(i):
            return flat.gather(2, i.expand(g, c, L))

        g_c = 1 - f_c
        top = tap(i00).mul_(g_c).add_(tap(i01).mul_(f_c))
        bot = tap(i10).mul_(g_c).add_(tap(i11).mul_(f_c))
        res = top.mul_(1 - f_r).add_(bot.mul_(f_r)).reshape((g, c) + tuple(out_shape))
        if to_u8:
            res = res.clamp_(0, 1).mul_(255.0)
        out[s:e] = res
    return out


# --------------------------------------------------------------------------
# Colour space
# --------------------------------------------------------------------------


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV for ``x`` [N, 3, H, W] in [0, 1] (hue in [0, 1))."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    mn, _ = x.min(1)
    delta = v - mn
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB, inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = torch.remainder(sector, 6).long()
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    # (r, g, b) for sectors 0..5
    table_r = torch.stack([v, q, p, p, t, v], 0)
    table_g = torch.stack([t, v, v, q, p, p], 0)
    table_b = torch.stack([p, p, t, v, v, q], 0)
    idx = sector.unsqueeze(0)
    r = table_r.gather(0, idx)[0]
    g = table_g.gather(0, idx)[0]
    b = table_b.gather(0, idx)[0]
    return torch.stack([r, g, b], 1)


# --------------------------------------------------------------------------
# Plasma fractal (diamond-square)
# --------------------------------------------------------------------------


def plasma_fractal(rngs: Sequence[np.random.Generator], mapsize: int,
                   decay: float) -> np.ndarray:
    """Batch of diamond-square height maps, ``[N, mapsize, mapsize]`` in [0, 1].

    The map is periodic (neighbours wrap around).  At each scale the new
    points are the mean of their four neighbours plus uniform noise of
    amplitude ``wibble^2`` (``wibble`` starts at 100 and is divided by
    ``decay`` at every halving of the step), then the map is min-max
    normalised.  One generator per image keeps maps independent of batching.
    """
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    n = len(rngs)
    # One draw per image of all the uniforms the map needs, in the order the
    # per-step draws would make them (each step: centres, then the two edge
    # sets, each k x k in C order, k = 1, 2, 4, ...).  u ~ U[0, 1) is exactly
    # the generator's double, so ``-wib + 2 * wib * u`` is bit for bit the value
    # ``uniform(-wib, wib)`` returns for it.
    total = sum(3 * 4 ** j for j in range(int(math.log2(mapsize))))
    u = np.empty((n, total))
    for i, r in enumerate(rngs):
        if type(r) is np.random.Generator:      # uniform(0, 1) is 0 + 1 * u: u itself, drawn in place
            r.random(out=u[i])
        else:
            u[i] = r.uniform(0.0, 1.0, total)
    m = np.concatenate([_plasma_grid(u[s:s + 128], mapsize, decay) for s in range(0, n, 128)])
    m -= m.min(axis=(1, 2), keepdims=True)
    m /= m.max(axis=(1, 2), keepdims=True)
    return m


def _plasma_grid(u: np.ndarray, mapsize: int, decay: float) -> np.ndarray:
    """Un-normalised diamond-square maps [n, mapsize, mapsize] from the uniforms
    ``u`` [n, 3 * (1 + 4 + ... )] of :func:`plasma_fractal`.

    The map at step ``s`` is kept as the contiguous [n, k, k] grid of its points
    (k = mapsize / s); each step interleaves the old points with the new centres
    and edge midpoints into the [n, 2k, 2k] grid of the next.  The periodic
    neighbour sums are written slice by slice (the same additions, in the same
    order, as ``a + np.roll(a, ...)``)."""
    n = len(u)
    grid = np.zeros((n, 1, 1))
    wibble = 100.0
    pos = 0

    def noisy_mean(acc, k):
        nonlocal pos
        v = u[:, pos:pos + k * k].reshape(n, k, k)
        pos += k * k
        acc /= 4
        acc += wibble * (v * (wibble - -wibble) + -wibble)
        return acc

    def plus_next(a, axis, out=None):        # a + np.roll(a, -1, axis)
        out = np.empty_like(a) if out is None else out
        if axis == 1:
            np.add(a[:, :-1], a[:, 1:], out=out[:, :-1])
            np.add(a[:, -1:], a[:, :1], out=out[:, -1:])
        else:
            np.add(a[:, :, :-1], a[:, :, 1:], out=out[:, :, :-1])
            np.add(a[:, :, -1:], a[:, :, :1], out=out[:, :, -1:])
        return out

    def plus_prev(a, axis, out=None):        # a + np.roll(a, 1, axis)
        out = np.empty_like(a) if out is None else out
        if axis == 1:
            np.add(a[:, 1:], a[:, :-1], out=out[:, 1:])
            np.add(a[:, :1], a[:, -1:], out=out[:, :1])
        else:
            np.add(a[:, :, 1:], a[:, :, :-1], out=out[:, :, 1:])
            np.add(a[:, :, :1], a[:, :, -1:], out=out[:, :, :1])
        return out

    def add_next(acc, a, axis):              # acc + np.roll(a, -1, axis), in place
        if axis == 1:
            acc[:, :-1] += a[:, 1:]
            acc[:, -1:] += a[:, :1]
        else:
            acc[:, :, :-1] += a[:, :, 1:]
            acc[:, :, -1:] += a[:, :, :1]
        return acc

    k = 1
    while k < mapsize:
        corners = grid
        if k == 1:                            # rolls of a 1 x 1 grid are the grid
            centres = noisy_mean(corners + corners + (corners + corners), k)
            horiz = noisy_mean(centres + centres + corners + corners, k)
            vert = noisy_mean(centres + centres + corners + corners, k)
        else:
            centres = noisy_mean(plus_next(plus_next(corners, 1), 2), k)
            # horizontal edge midpoints: corners left/right, centres above/below
            acc = plus_prev(centres, 1)
            acc += corners
            horiz = noisy_mean(add_next(acc, corners, 2), k)
            # vertical edge midpoints: corners above/below, centres left/right
            acc = plus_prev(centres, 2)
            acc += corners
            vert = noisy_mean(add_next(acc, corners, 1), k)
        nxt = np.empty((n, k, 2, k, 2))
        nxt[:, :, 0, :, 0] = corners
        nxt[:, :, 0, :, 1] = horiz
        nxt[:, :, 1, :, 0] = vert
        nxt[:, :, 1, :, 1] = centres
        grid = nxt.reshape(n, 2 * k, 2 * k)
        k *= 2
        wibble /= decay
    return grid


# --------------------------------------------------------------------------
# Edges, distances, histograms (for spatter)
# --------------------------------------------------------------------------


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Canny edge map (bool) of uint8-valued images ``img`` [N, H, W].

    3x3 Sobel gradients with replicated borders, L1 magnitude, non-maximum
    suppression in 4 directions (OpenCV's tie-breaking) and 8-connected
    hysteresis between ``low`` and ``high``.

    Integer arithmetic throughout: the Sobel sums of 8-bit values (|g| <= 1020, magnitude
    <= 2040) are exact in int16; the direction tests ``ay < ax * tan(22.5 deg)`` and ``ay > ax *
    tan(67.5 deg)`` are ``(ax + ay)^2 < 2 ax^2`` and ``ay - ax > 0 with (ay - ax)^2 > 2 ax^2``
    in int32 (tan 22.5 = sqrt(2) - 1, tan 67.5 = sqrt(2) + 1; equal to the float64 products
    for every (ax, ay) in [0, 1020]^2, checked); ``gx * gy < 0`` is "the signs differ", the
    same where it is used (on diagonals gx and gy are both zero or both non-zero).
    """
    n, h, w = img.shape
    a = img.to(torch.int16).numpy()
    xp = np.empty((n, h + 2, w + 2), dtype=np.int16)          # edge-padded
    xp[:, 1:-1, 1:-1] = a
    xp[:, 1:-1, 0] = a[:, :, 0]
    xp[:, 1:-1, -1] = a[:, :, -1]
    xp[:, 0] = xp[:, 1]
    xp[:, -1] = xp[:, -2]
    dx = xp[:, :, 2:] - xp[:, :, :w]                           # [N, H+2, W]
    gx = dx[:, :h] + dx[:, 2:]
    gx += dx[:, 1:h + 1]
    gx += dx[:, 1:h + 1]
    dy = xp[:, 2:] - xp[:, :h]                                 # [N, H, W+2]
    gy = dy[:, :, :w] + dy[:, :, 2:]
    gy += dy[:, :, 1:w + 1]
    gy += dy[:, :, 1:w + 1]
    ax, ay = np.abs(gx), np.abs(gy)
    mp = np.zeros((n, h + 2, w + 2), dtype=np.int16)           # magnitude, zero outside
    mag = mp[:, 1:-1, 1:-1]
    np.add(ax, ay, out=mag)

    def nb(dr, dc):
        return mp[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax2 = ax.astype(np.int32)
    ax2 *= ax2
    ax2 *= 2                                                   # 2 ax^2
    t = mag.astype(np.int32)
    t *= t
    horiz = t < ax2
    d = (ay - ax).astype(np.int32)
    vert = d > 0
    d *= d
    vert &= d > ax2
    vert &= ~horiz
    diag = ~(horiz | vert)
    sgn_neg = (gx < 0) != (gy < 0)
    lm_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    lm_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    # s = -1 when the signs differ: compare (r-1, c+1) and (r+1, c-1)
    lm_d = np.where(sgn_neg, (mag > nb(-1, 1)) & (mag > nb(1, -1)),
                    (mag > nb(-1, -1)) & (mag > nb(1, 1)))
    local_max = (horiz & lm_h) | (vert & lm_v) | (diag & lm_d)
    cand = torch.from_numpy(local_max & (mag > low))
    edges = cand & torch.from_numpy(mag > high)
    while True:
        new = _dilate3(edges) & cand
        if torch.equal(new, edges):
            return edges
        edges = new


def correlate3_int(x: torch.Tensor, kernel, mode: str = "reflect101") -> torch.Tensor:
    """Correlation of integer-valued ``x`` [..., H, W] with an integer 3x3
    ``kernel`` (nested lists), as shifted adds: every partial sum is an
    integer, so the result is exact (equal to :func:`filter2d`'s) for inputs
    whose weighted sums stay below 2^53."""
    h, w = x.shape[-2:]
    xp = pad2d(x, 1, 1, mode)
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            k = kernel[i][j]
            if k:
                out.add_(xp[..., i:i + h, j:j + w], alpha=k)
    return out


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation of bool ``m`` [N, H, W] (outside counts as False)."""
    r = m.clone()
    r[:, :, 1:] |= m[:, :, :-1]
    r[:, :, :-1] |= m[:, :, 1:]
    out = r.clone()
    out[:, 1:] |= r[:, :-1]
    out[:, :-1] |= r[:, 1:]
    return out


def distance_to_mask(mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest ``True`` pixel of
    ``mask`` [N, H, W], capped at ``cap`` (also used where there is none).

    Exact separable transform on integers: the vertical distance to the nearest mask pixel
    of the same column comes from running max/min of the mask's row indices; the row pass
    takes, for every pixel, the minimum over the columns of that squared plus the squared
    horizontal distance. Squared distances above ``cap^2`` all end at the cap, so they are
    clipped to ``floor(cap^2) + 1`` and only horizontal offsets up to ``cap`` are tried
    (shifted whole blocks of a column-major copy); the result's square root is torch's
    float64 ``sqrt`` (as before, so the same values; read from a table of it), then the cap."""
    n, h, w = mask.shape
    if n == 0:
        return torch.empty(n, h, w, dtype=torch.float64)
    c2 = int(math.floor(cap * cap)) + 1
    far = h + w + int(math.ceil(cap)) + 1                  # beyond the cap
    dt = np.int16 if max(c2 + w * w, (h + far) ** 2) < 2 ** 15 else np.int64
    m = np.ascontiguousarray(np.moveaxis(mask.numpy(), 1, 0))   # [H, N, W]: row scans are whole blocks
    rows = np.arange(h, dtype=dt).reshape(h, 1, 1)
    above = np.where(m, rows, dt(-far))                    # nearest mask row at or above
    below = np.where(m, rows, dt(h - 1 + far))             # ... at or below
    for i in range(1, h):
        np.maximum(above[i], above[i - 1], out=above[i])
        np.minimum(below[h - 1 - i], below[h - i], out=below[h - 1 - i])
    g = np.minimum(rows - above, below - rows)
    g *= g
    np.minimum(g, dt(c2), out=g)
    g2 = np.ascontiguousarray(np.transpose(g, (2, 1, 0)))  # [W, N, H]
    d2 = g2.copy()
    tmp = np.empty_like(g2)
    for k in range(1, min(w - 1, int(math.floor(cap))) + 1):
        kk = dt(k * k)
        np.add(g2[:-k], kk, out=tmp[k:])                  # source k columns to the left
        np.minimum(d2[k:], tmp[k:], out=d2[k:])
        np.add(g2[k:], kk, out=tmp[:-k])                  # ... to the right
        np.minimum(d2[:-k], tmp[:-k], out=d2[:-k])
    # min(sqrt(d2), cap) by lookup in a table made with the same torch float64 sqrt
    table = torch.arange(c2 + 1, dtype=torch.float64).sqrt_().clamp_(max=cap)
    idx = torch.from_numpy(np.moveaxis(d2, 0, 2).astype(np.int64, order="C"))
    return table.index_select(0, idx.view(-1)).view(n, h, w)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of uint8-valued ``img`` [N, H, W]
    (OpenCV ``equalizeHist`` rule: the lowest occupied level maps to 0, the
    others to ``round(255 * cdf_above_lowest / pixels_above_lowest)``).
    Vectorised over the batch (one histogram per image)."""
    n = img.shape[0]
    if n == 0:
        return img.clone()
    flat = img.reshape(n, -1).long()
    total = flat.shape[1]
    flat += (torch.arange(n) * 256).view(n, 1)                  # bin of (image, level)
    # the counts, as float64 (integers: the same values as summed ones)
    hist = torch.zeros(n * 256, dtype=torch.int64)
    hist.scatter_add_(0, flat.view(-1), torch.ones(1, dtype=torch.int64).expand(flat.numel()))
    hist = hist.view(n, 256).to(torch.float64)
    lowest = (hist > 0).to(torch.uint8).argmax(1, keepdim=True)  # lowest occupied level
    h_low = hist.gather(1, lowest)
    single = h_low == total                                     # one level only: keep it
    scale = 255.0 / torch.where(single, torch.ones_like(h_low), total - h_low)
    cdf = torch.cumsum(hist, 1) - h_low
    lut = torch.floor(cdf * scale + 0.5).clamp(0, 255)
    lut = torch.where(torch.arange(256).view(1, 256) <= lowest, torch.zeros_like(lut), lut)
    lut = torch.where(single, lowest.to(torch.float64), lut)
    return lut.to(img.dtype).view(-1).index_select(0, flat.view(-1)).view(img.shape)    # integer levels
