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
    mh = filter_matrix(h, kernel, mode).to(x.dtype)
    mw = filter_matrix(w, kernel, mode).to(x.dtype)
    return mh @ x @ mw.T


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


def motion_blur(x: torch.Tensor, radius: float, sigma: float,
                angles: Sequence[float]) -> torch.Tensor:
    """Per-image motion blur of ``x`` ([N, C, H, W]) with one angle per image.

    Out-of-image samples use the nearest edge pixel (ImageMagick's default
    virtual-pixel method).
    """
    n, c, h, w = x.shape
    taps = [motion_taps(radius, sigma, a) for a in angles]
    width = len(taps[0][0])
    p = width
    xp = pad2d(x, p, p, "edge")
    hp, wp = h + 2 * p, w + 2 * p
    flat = xp.reshape(n, c, hp * wp)
    rows = torch.arange(h).view(h, 1) + p
    cols = torch.arange(w).view(1, w) + p
    base = (rows * wp + cols).reshape(1, 1, h * w)
    weights = torch.tensor(np.stack([t[0] for t in taps]), dtype=x.dtype)      # [N, width]
    shift = torch.tensor(np.stack([t[1] * wp + t[2] for t in taps]))          # [N, width]
    out = torch.zeros(n, c, h * w, dtype=x.dtype)
    for i in range(width):
        idx = (base + shift[:, i].view(n, 1, 1)).expand(n, c, h * w)
        out += weights[:, i].view(n, 1, 1) * flat.gather(2, idx)
    return out.reshape(n, c, h, w)


def imagemagick_to_u8(y: torch.Tensor) -> torch.Tensor:
    """Quantise 0..255 floats the way ImageMagick (Q16 build) writes 8-bit
    output: round to a 16-bit quantum (``v * 257``), then integer-divide by
    257.  This is a truncation with a tiny tolerance, not a rounding."""
    q = torch.floor(y * 257.0 + 0.5)
    return torch.floor(q / 257.0).clamp(0, 255)


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
                    mode: str) -> torch.Tensor:
    """Sample ``x`` ([N, C, H, W]) at fractional positions ``rows``/``cols``
    ([N, H', W']) with bilinear interpolation; neighbours outside the image
    are mapped back with :func:`border_index`."""
    n, c, h, w = x.shape
    r0 = torch.floor(rows)
    c0 = torch.floor(cols)
    fr = (rows - r0).unsqueeze(1).to(x.dtype)
    fc = (cols - c0).unsqueeze(1).to(x.dtype)
    r0 = r0.long()
    c0 = c0.long()
    flat = x.reshape(n, c, h * w)
    out_shape = rows.shape[1:]

    def tap(ri, ci):
        idx = border_index(ri, h, mode) * w + border_index(ci, w, mode)
        idx = idx.reshape(n, 1, -1).expand(n, c, idx[0].numel())
        return flat.gather(2, idx).reshape(n, c, *out_shape)

    top = tap(r0, c0) * (1 - fc) + tap(r0, c0 + 1) * fc
    bot = tap(r0 + 1, c0) * (1 - fc) + tap(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bot * fr


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
    m = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def noise(shape):
        return np.stack([wibble * r.uniform(-wibble, wibble, shape) for r in rngs])

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        acc = corners + np.roll(corners, -1, axis=1)
        acc = acc + np.roll(acc, -1, axis=2)
        m[:, half::step, half::step] = acc / 4 + noise(acc.shape[1:])
        centres = m[:, half::step, half::step]
        corners = m[:, ::step, ::step]
        # midpoints of horizontal edges: corners left/right, centres above/below
        acc = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        m[:, ::step, half::step] = acc / 4 + noise(acc.shape[1:])
        # midpoints of vertical edges: corners above/below, centres left/right
        acc = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        m[:, half::step, ::step] = acc / 4 + noise(acc.shape[1:])
        step = half
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


# --------------------------------------------------------------------------
# Edges, distances, histograms (for spatter)
# --------------------------------------------------------------------------


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Canny edge map (bool) of uint8-valued images ``img`` [N, H, W].

    3x3 Sobel gradients with replicated borders, L1 magnitude, non-maximum
    suppression in 4 directions (OpenCV's tie-breaking) and 8-connected
    hysteresis between ``low`` and ``high``.
    """
    x = img.to(torch.float64).unsqueeze(1)
    xp = pad2d(x, 1, 1, "edge")
    sx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx = F.conv2d(xp, sx.view(1, 1, 3, 3))[:, 0]
    gy = F.conv2d(xp, sx.T.contiguous().view(1, 1, 3, 3))[:, 0]
    mag = gx.abs() + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))  # zero outside

    def nb(dr, dc):
        h, w = mag.shape[-2:]
        return mp[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax, ay = gx.abs(), gy.abs()
    tg22 = ax * math.tan(math.radians(22.5))
    tg67 = ax * math.tan(math.radians(67.5))
    horiz = ay < tg22
    vert = (~horiz) & (ay > tg67)
    diag = ~(horiz | vert)
    sgn_neg = (gx * gy) < 0
    lm_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    lm_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    # s = -1 when the signs differ: compare (r-1, c+1) and (r+1, c-1)
    lm_d = torch.where(sgn_neg, (mag > nb(-1, 1)) & (mag > nb(1, -1)),
                       (mag > nb(-1, -1)) & (mag > nb(1, 1)))
    local_max = (horiz & lm_h) | (vert & lm_v) | (diag & lm_d)
    cand = local_max & (mag > low)
    edges = cand & (mag > high)
    while True:
        grown = F.max_pool2d(edges.unsqueeze(1).float(), 3, 1, 1)[:, 0] > 0
        new = grown & cand
        if torch.equal(new, edges):
            return edges
        edges = new


def distance_to_mask(mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest ``True`` pixel of
    ``mask`` [N, H, W], capped at ``cap`` (also used where there is none)."""
    n, h, w = mask.shape
    big = float(h * h + w * w + cap * cap + 1)
    r = torch.arange(h, dtype=torch.float64)
    c = torch.arange(w, dtype=torch.float64)
    dr2 = (r.view(h, 1) - r.view(1, h)) ** 2                    # [H, H']
    dc2 = (c.view(w, 1) - c.view(1, w)) ** 2                    # [W, W']
    out = torch.empty(n, h, w, dtype=torch.float64)
    chunk = max(1, int(2e7 // (h * h * w + h * w * w)))
    for s in range(0, n, chunk):
        mk = mask[s:s + chunk].to(torch.float64)
        # column pass: squared vertical distance to the nearest mask pixel
        vals = torch.where(mk.unsqueeze(1) > 0, dr2.view(1, h, h, 1), torch.full((), big, dtype=torch.float64))
        g = vals.min(2).values                                   # [n, H, W]
        # row pass: min over columns of g + horizontal distance^2
        d2 = (g.unsqueeze(2) + dc2.view(1, 1, w, w)).min(3).values
        out[s:s + chunk] = d2.sqrt()
    return out.clamp(max=cap)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of uint8-valued ``img`` [N, H, W]
    (OpenCV ``equalizeHist`` rule: the lowest occupied level maps to 0, the
    others to ``round(255 * cdf_above_lowest / pixels_above_lowest)``)."""
    n = img.shape[0]
    out = torch.empty_like(img)
    flat = img.reshape(n, -1).long()
    total = flat.shape[1]
    for k in range(n):
        hist = torch.bincount(flat[k], minlength=256).double()
        lowest = int(torch.nonzero(hist)[0])
        if hist[lowest] == total:
            out[k] = lowest
            continue
        scale = 255.0 / (total - hist[lowest])
        cdf = torch.cumsum(hist, 0) - hist[lowest]
        lut = torch.floor(cdf * scale + 0.5).clamp(0, 255)
        lut[:lowest + 1] = 0
        out[k] = lut[flat[k]].reshape(img.shape[1:]).to(img.dtype)
    return out
