"""The batched / chunked corruption operations equal straightforward per-image computations.

Each test writes the plain algorithm (the one the fast code replaced: per-image gathers, per-step
draws, brute-force distances, per-image histograms, conv2d filters, max-pool dilation) and checks
that the fast operation gives the same values on random inputs, bit for bit where the fast code
claims it (issue 16 item 7, part B).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    from scenarios.corruptions import _ops as ops
except ImportError:  # running pytest without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenarios.corruptions import _ops as ops
from scenarios import corruptions as C


# ----------------------------------------------------------------------------- motion blur


def _motion_blur_per_image(x, radius, sigma, angles):
    """Per image and tap: gather the edge-clamped shifted pixel, accumulate weight * value."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    rows = torch.arange(h).view(h, 1)
    cols = torch.arange(w).view(1, w)
    for k, a in enumerate(angles):
        wts, dr, dc = ops.motion_taps(radius, sigma, a)
        for t in range(len(wts)):
            r = (rows + int(dr[t])).clamp(0, h - 1).expand(h, w)
            q = (cols + int(dc[t])).clamp(0, w - 1).expand(h, w)
            out[k] += float(wts[t]) * x[k].to(torch.float64)[:, r, q]
    return out


@pytest.mark.parametrize("radius,sigma,lo,hi,c", [(6, 1, -45, 45, 3), (9, 2.5, -45, 45, 3),
                                                  (14, 12, -135, -45, 1), (3, 1, -180, 180, 2)])
def test_motion_blur_equals_per_image_gathers(radius, sigma, lo, hi, c):
    rng = np.random.default_rng(radius)
    n = 150                                     # > one chunk, so chunks and runs are exercised
    x = torch.from_numpy(rng.integers(0, 256, (n, c, 20, 24))).to(torch.float64)
    angles = list(rng.uniform(lo, hi, n))
    angles[:3] = [lo, 0.0, hi]
    ref = _motion_blur_per_image(x, radius, sigma, angles)
    fast = ops.motion_blur(x, radius, sigma, angles, chunk=32)
    assert torch.allclose(fast, ref, rtol=0, atol=1e-9)
    assert torch.equal(ops.imagemagick_to_u8(fast), ops.imagemagick_to_u8(ref))
    u8 = ops.motion_blur(x.to(torch.uint8), radius, sigma, angles, to_u8=True)
    assert u8.dtype == torch.uint8 and torch.equal(u8.to(torch.float64), ops.imagemagick_to_u8(fast))


def test_motion_offsets_match_motion_taps():
    angles = list(np.random.default_rng(1).uniform(-180, 180, 200)) + [0.0, 45.0, -45.0, 90.0]
    w, dr, dc = ops.motion_offsets(8, 2, angles)
    for k, a in enumerate(angles):
        w1, dr1, dc1 = ops.motion_taps(8, 2, a)
        assert np.array_equal(w, w1) and np.array_equal(dr[k], dr1) and np.array_equal(dc[k], dc1)


def test_motion_blur_empty_batch():
    assert ops.motion_blur(torch.zeros(0, 3, 8, 8), 6, 1, []).shape == (0, 3, 8, 8)


# ----------------------------------------------------------------------------- plasma fractal


def _plasma_per_step(rngs, mapsize, decay):
    """Diamond-square with one uniform(-wibble, wibble) draw per step and point set."""
    n = len(rngs)
    m = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

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
        acc = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        m[:, ::step, half::step] = acc / 4 + noise(acc.shape[1:])
        acc = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        m[:, half::step, ::step] = acc / 4 + noise(acc.shape[1:])
        step = half
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("mapsize,decay", [(32, 3.0), (32, 1.75), (64, 2.5), (2, 2.0)])
def test_plasma_fractal_equals_per_step_draws(mapsize, decay):
    def gens():
        return [np.random.default_rng([7, i]) for i in range(150)]

    ref = _plasma_per_step(gens(), mapsize, decay)
    fast = ops.plasma_fractal(gens(), mapsize, decay)
    assert np.array_equal(fast, ref)                    # bit for bit, same draws
    legacy = [np.random.RandomState(3)]                 # the legacy stream too (golden replay)
    assert np.array_equal(ops.plasma_fractal([np.random.RandomState(3)], mapsize, decay),
                          _plasma_per_step(legacy, mapsize, decay))


# ----------------------------------------------------------------------------- spatter helpers


def _distance_brute(mask, cap):
    n, h, w = mask.shape
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pts = torch.stack([rr.flatten(), cc.flatten()], 1).to(torch.float64)      # [HW, 2]
    d = torch.cdist(pts, pts) ** 2                                            # [HW, HW] squared
    out = torch.full((n, h * w), float(cap), dtype=torch.float64)
    for k in range(n):
        on = mask[k].flatten()
        if on.any():
            out[k] = d[:, on].min(1).values.round().sqrt().clamp(max=cap)
    return out.reshape(n, h, w)


def test_distance_to_mask_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(40, 17, 23, generator=g) < 0.03
    mask[0] = False                                     # no mask pixel: everything at the cap
    mask[1] = False
    mask[1, 5, 7] = True                                # one pixel: plain euclidean distances
    assert torch.equal(ops.distance_to_mask(mask, 20.0), _distance_brute(mask, 20.0))
    assert torch.equal(ops.distance_to_mask(mask, 3.5), _distance_brute(mask, 3.5))


def _equalize_per_image(img):
    out = torch.empty_like(img)
    for k in range(img.shape[0]):
        flat = img[k].flatten().long()
        hist = torch.bincount(flat, minlength=256).double()
        lowest = int(torch.nonzero(hist)[0])
        if hist[lowest] == flat.numel():
            out[k] = lowest
            continue
        cdf = torch.cumsum(hist, 0) - hist[lowest]
        lut = torch.floor(cdf * (255.0 / (flat.numel() - hist[lowest])) + 0.5).clamp(0, 255)
        lut[:lowest + 1] = 0
        out[k] = lut[flat].reshape(img.shape[1:]).to(img.dtype)
    return out


def test_equalize_hist_equals_per_image():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 21, (30, 16, 16), generator=g, dtype=torch.uint8)
    img[0] = 7                                          # a single level stays as it is
    img[1] = torch.randint(100, 103, (16, 16), generator=g, dtype=torch.uint8)
    fast = ops.equalize_hist(img)
    assert torch.equal(fast, _equalize_per_image(img))
    assert (fast[0] == 7).all()


def test_correlate3_int_equals_filter2d():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (5, 13, 11), generator=g).to(torch.float64)
    ker = [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]
    ref = F.conv2d(ops.pad2d(x.unsqueeze(1), 1, 1, "reflect101"),
                   torch.tensor(ker, dtype=torch.float64).view(1, 1, 3, 3))[:, 0]
    assert torch.equal(ops.correlate3_int(x, ker, "reflect101"), ref)


def _canny_conv_maxpool(img, low, high):
    """The conv2d / max-pool formulation of the same Canny rule, in float64."""
    x = img.to(torch.float64).unsqueeze(1)
    xp = ops.pad2d(x, 1, 1, "edge")
    sx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx = F.conv2d(xp, sx.view(1, 1, 3, 3))[:, 0]
    gy = F.conv2d(xp, sx.T.contiguous().view(1, 1, 3, 3))[:, 0]
    mag = gx.abs() + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[-2:]

    def nb(dr, dc):
        return mp[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax, ay = gx.abs(), gy.abs()
    horiz = ay < ax * math.tan(math.radians(22.5))
    vert = (~horiz) & (ay > ax * math.tan(math.radians(67.5)))
    diag = ~(horiz | vert)
    lm_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    lm_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    lm_d = torch.where((gx * gy) < 0, (mag > nb(-1, 1)) & (mag > nb(1, -1)),
                       (mag > nb(-1, -1)) & (mag > nb(1, 1)))
    cand = ((horiz & lm_h) | (vert & lm_v) | (diag & lm_d)) & (mag > low)
    edges = cand & (mag > high)
    while True:
        new = (F.max_pool2d(edges.unsqueeze(1).float(), 3, 1, 1)[:, 0] > 0) & cand
        if torch.equal(new, edges):
            return edges
        edges = new


def test_canny_equals_conv_and_maxpool_formulation():
    g = torch.Generator().manual_seed(3)
    smooth = F.avg_pool2d(torch.rand(60, 1, 36, 36, generator=g) * 255, 5, 1)[:, 0]
    img = torch.floor(smooth * 3).clamp(0, 255)                  # [60, 32, 32] 8-bit values
    fast = ops.canny(img, 50, 150)
    assert fast.any() and torch.equal(fast, _canny_conv_maxpool(img, 50, 150))


# ----------------------------------------------------------------------------- bilinear sampling


def _bilinear_per_pixel(x, rows, cols, mode):
    n, c, h, w = x.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    fr, fc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()

    def tap(ri, ci):
        ri, ci = ops.border_index(ri, h, mode), ops.border_index(ci, w, mode)
        return torch.stack([x[k][:, ri[k], ci[k]] for k in range(n)])

    top = tap(r0, c0) * (1 - fc) + tap(r0, c0 + 1) * fc
    bot = tap(r0 + 1, c0) * (1 - fc) + tap(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bot * fr


@pytest.mark.parametrize("mode", ["reflect101", "symmetric", "edge"])
def test_bilinear_sample_equals_per_pixel(mode):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(70, 3, 9, 12, generator=g, dtype=torch.float64)
    rows = torch.rand(70, 7, 5, generator=g, dtype=torch.float64) * 30 - 10   # far outside too
    cols = torch.rand(70, 7, 5, generator=g, dtype=torch.float64) * 30 - 10
    rows[0] = torch.round(rows[0])                      # integer positions
    ref = _bilinear_per_pixel(x, rows, cols, mode)
    assert torch.equal(ops.bilinear_sample(x, rows, cols, mode, chunk=16), ref)
    u8 = ops.bilinear_sample(x, rows, cols, mode, chunk=16, to_u8=True)
    assert torch.equal(u8, (ref.clamp(0, 1) * 255).to(torch.uint8))


# ----------------------------------------------------------------------------- whole corruptions


class _Recorder:
    """Hands out draws from a Generator and keeps nothing else: lets a test rerun the same draws."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self.g, name)


def test_elastic_alpha_zero_skips_an_identity_resampling():
    """Severity 1 (no displacement) takes the shortcut; it must equal sampling twice."""
    x = torch.randint(0, 256, (70, 3, 32, 32), generator=torch.Generator().manual_seed(5),
                      dtype=torch.uint8)
    c = C._params.PARAM_TABLES["cifar"][0]["elastic_transform"][0]
    assert c[0] == 0
    fast = C._FUNCS["elastic_transform"](x, c, rngs=[_Recorder(i) for i in range(70)])
    # the same with a tiny non-zero alpha whose displacements round away: full two-pass path
    slow = C._FUNCS["elastic_transform"](x, (1e-300, 1.0, c[2]), rngs=[_Recorder(i) for i in range(70)])
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("name", ["snow", "fog", "spatter", "elastic_transform"])
def test_chunked_corruptions_do_not_depend_on_the_chunk_size(name, monkeypatch):
    x = torch.randint(0, 256, (70, 3, 32, 32), generator=torch.Generator().manual_seed(6),
                      dtype=torch.uint8)
    for sev in (1, 3, 5):
        a = C.corrupt(x, name, sev, seed=1)
        monkeypatch.setattr(C, "_CHUNK", 7)
        b = C.corrupt(x, name, sev, seed=1)
        monkeypatch.setattr(C, "_CHUNK", 64)
        assert torch.equal(a, b), (name, sev)
