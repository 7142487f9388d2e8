"""The batched fast paths of scenarios.corruptions (issue 16 item 7, part A).

They must give what the straightforward per-image / float64 computations give: chunk and memory
layout invariance, per-image streams, the noise tables' probabilities, and equality with PIL /
skimage-style formulas for the deterministic corruptions.
"""
from __future__ import annotations

import io
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import corruptions as C  # noqa: E402
from scenarios.corruptions import _ops as ops  # noqa: E402
from scenarios.corruptions import _rng  # noqa: E402
from scenarios.corruptions._params import CIFAR_PARAMS  # noqa: E402

MINE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "brightness", "saturate",
        "contrast", "pixelate", "jpeg_compression", "defocus_blur", "gaussian_blur")


def _images(n=12, seed=0):
    """Random pixels, flat patches and saturated corners (edge cases of every table)."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    x[:, :, 4:12, 4:12] = g.integers(0, 256, (n, 3, 1, 1), dtype=np.uint8)
    x[:, :, :3, :3] = 0
    x[:, :, -3:, -3:] = 255
    x[0] = 0
    x[1] = 255
    return torch.from_numpy(x)


@pytest.mark.parametrize("name", MINE)
def test_chunks_single_images_and_layout_give_the_batch_output(name):
    x = _images()
    whole = C.corrupt(x, name, 3, seed=11)
    chunks = torch.cat([C.corrupt(x[s:s + 5], name, 3, seed=11, indices=range(s, min(s + 5, len(x))))
                        for s in range(0, len(x), 5)])
    single = torch.stack([C.corrupt(x[i], name, 3, seed=11, indices=[i]) for i in range(len(x))])
    assert torch.equal(whole, chunks) and torch.equal(whole, single)
    cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = C.corrupt(cl, name, 3, seed=11)
    assert torch.equal(out_cl, whole)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and whole.is_contiguous()


def test_streams_depend_on_the_key_only():
    a = _rng.stream_states(5, "gaussian_noise", 2, [0, 1, 2, 3])
    assert np.array_equal(a[2:], _rng.stream_states(5, "gaussian_noise", 2, [2, 3]))
    keys = [(5, "gaussian_noise", 2), (6, "gaussian_noise", 2), (5, "shot_noise", 2), (5, "gaussian_noise", 3)]
    states = np.concatenate([_rng.stream_states(s, n, v, range(100)) for s, n, v in keys])
    assert len({tuple(r) for r in states}) == len(states)             # all distinct


def test_image_rng_is_an_sfc64_generator_with_that_state():
    state = _rng.stream_states(1, "x", 1, [4])[0]
    r = _rng.image_rngs(1, "x", 1, [4])[0]
    bg = np.random.SFC64(0)
    bg.state = {"bit_generator": "SFC64", "state": {"state": state}, "has_uint32": 0, "uinteger": 0}
    g = np.random.Generator(bg)
    assert np.array_equal(r.raw(3), bg.random_raw(3))
    assert np.array_equal(r.normal(0.0, 2.0, (2, 3)), g.normal(0.0, 2.0, (2, 3)))
    assert np.array_equal(r.integers(0, 7, 5), g.integers(0, 7, 5))
    assert r.uniform(-1, 1) == g.uniform(-1, 1)
    assert np.array_equal(r.random(4, dtype=np.float32), g.random(4, dtype=np.float32))  # half words buffered
    assert np.array_equal(r.poisson(np.array([3.0, 40.0])), g.poisson(np.array([3.0, 40.0])))
    assert np.array_equal(_rng.raw_words([r], 2)[0], bg.random_raw(2))


@pytest.mark.parametrize("key", [[0, zlib.crc32(b"fog"), 1], [2**40 + 3, 17, 5], [2**70], [], [1, 2, 3, 4, 5]])
def test_version1_streams_are_default_rng_of_the_key(key):
    """The batch-hashed generators are numpy's default_rng([*key, index]): same state, same draws."""
    idx = list(range(40)) + [2**32 - 1, 123456789]
    for i, g in zip(idx, _rng.default_rngs(key, idx)):
        ref = np.random.default_rng([*key, i])
        assert g.bit_generator.state == ref.bit_generator.state
        assert np.array_equal(g.normal(0.5, 2.0, 7), ref.normal(0.5, 2.0, 7))
    words = np.array([[5, 0, 3, 9, 11, 4]], dtype=np.uint32)   # longer than the 4-word pool
    ss = np.random.SeedSequence([5, 0, 3, 9, 11, 4])
    assert np.array_equal(_rng.seed_sequence_words(words)[0], ss.generate_state(4, np.uint64))


def test_normal_fields_are_numpys_normal_draws():
    """The in-place draws are np.stack of Generator.normal(loc, scale, shape) (same stream, same
    values); other stream objects go through their own normal()."""
    a = [np.random.default_rng([5, i]) for i in range(30)]
    b = [np.random.default_rng([5, i]) for i in range(30)]
    got = C._normal_fields(a, 0.65, 0.3, (32, 32))
    assert np.array_equal(got, np.stack([r.normal(0.65, 0.3, (32, 32)) for r in b]))
    assert all(x.bit_generator.state == y.bit_generator.state for x, y in zip(a, b))

    class Replay:
        def normal(self, loc, scale, size):
            return np.full(size, loc + scale)
    assert np.array_equal(C._normal_fields([Replay()], 1.0, 2.0, (2, 3)), np.full((1, 2, 3), 3.0))


def _weights(table):
    t = table.reshape(-1, 256).astype(np.int64)
    thr, alias = t >> 8, t & 255
    return np.stack([np.bincount(np.arange(256), thr[r], 256) + np.bincount(alias[r], 256 - thr[r], 256)
                     for r in range(len(t))]).astype(np.int64)


def test_alias_tables_hold_the_rounded_probabilities():
    g = np.random.default_rng(0)
    cases = [np.eye(256), np.full((256, 256), 1 / 256)]
    for k in range(4):
        p = g.random((256, 256)) ** (1 + 3 * k)
        p[:, g.random(256) < 0.5] = 0
        cases.append(p / p.sum(1, keepdims=True))
    for p in cases:
        w = _weights(C._build_alias(p))
        assert (w.sum(1) == 65536).all()
        assert np.abs(w / 65536 - p).max() <= 1 / 65536


@pytest.mark.parametrize("c", [p for p in CIFAR_PARAMS["shot_noise"]])
def test_shot_table_is_the_reference_output_distribution(c):
    w = _weights(C._shot_table(float(c))) / 65536
    for x in (0, 1, 37, 128, 254, 255):
        lam = x / 255.0 * c
        counts = np.arange(int(c * 3 + 50))
        pmf = np.array([math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) if lam > 0 else float(k == 0)
                        for k in counts])
        level = np.uint8(np.clip(counts / c, 0, 1) * 255)
        want = np.bincount(level, pmf, 256)
        assert np.abs(w[x] - want).max() <= 1.5 / 65536, x


def _generic(name, x, sev, seed=0):
    """The float path (what the golden set's replay exercises), with numpy Generators."""
    table, extra = C.PARAM_TABLES["cifar"]
    rngs = [np.random.default_rng([seed, i]) for i in range(len(x))]
    return C._FUNCS[name](x, table[name][sev - 1], rngs=rngs, extra=extra)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_fast_noise_has_the_float_path_distribution(name):
    """Per input level, the output histograms of the fast path and of the float path agree
    (total variation within sampling error) over 96 images of a ramp of all 256 levels."""
    ramp = torch.arange(256, dtype=torch.uint8).repeat(12).view(1, 3, 32, 32).expand(96, 3, 32, 32).contiguous()
    for sev in (1, 5):
        fast = C.corrupt(ramp, name, sev, seed=1)
        slow = _generic(name, ramp, sev)
        for level in (0, 10, 128, 200, 255):
            sel = ramp == level
            hf = np.bincount(fast[sel].numpy(), minlength=256) / sel.sum().item()
            hs = np.bincount(slow[sel].numpy(), minlength=256) / sel.sum().item()
            tv = 0.5 * np.abs(hf - hs).sum()
            assert tv < 0.2, (name, sev, level, tv)                  # 1,152 draws per level and path
        assert abs(fast.double().mean().item() - slow.double().mean().item()) < 0.5
        assert abs(fast.double().std().item() - slow.double().std().item()) < 0.5


def test_impulse_fraction_and_salt_share():
    x = torch.full((64, 3, 32, 32), 100, dtype=torch.uint8)
    y = C.corrupt(x, "impulse_noise", 5, seed=2)                         # amount 0.07
    assert ((y == 100) | (y == 0) | (y == 255)).all()
    hit = (y != 100).double().mean().item()
    assert abs(hit - 0.07) < 0.004
    assert abs((y == 255).double().sum().item() / (y != 100).sum().item() - 0.5) < 0.03


@pytest.mark.parametrize("sev", [1, 2, 3, 4, 5])
def test_pixelate_is_pils_box_resize(sev):
    x = _images(6, seed=sev)
    c = CIFAR_PARAMS["pixelate"][sev - 1]
    ours = C.corrupt(x, "pixelate", sev).permute(0, 2, 3, 1).numpy()
    for k, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        im = Image.fromarray(img).resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
        assert np.array_equal(ours[k], np.asarray(im)), k


def test_pixelate_matrix_fallback_matches_pil():
    """Boxes of three or more pixels (strong down-scaling) take the matrix path."""
    x = _images(3)
    assert C._pixelate_taps(32, 8) is None
    ours = C._pixelate(x, 0.25).permute(0, 2, 3, 1).numpy()
    for k, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        im = Image.fromarray(img).resize((8, 8), Image.BOX).resize((32, 32), Image.BOX)
        assert np.array_equal(ours[k], np.asarray(im))


@pytest.mark.parametrize("sev", [1, 3, 5])
def test_jpeg_batched_torchvision_equals_pil(sev, monkeypatch):
    x = _images(8, seed=sev)
    fast = C.corrupt(x, "jpeg_compression", sev)
    monkeypatch.setattr(C, "_JPEG_WITH_PIL", True)
    assert torch.equal(fast, C.corrupt(x, "jpeg_compression", sev))


def _old_hsv(x, channel, scale, offset):
    hsv = ops.rgb_to_hsv(x.to(torch.float64) / 255.0)
    hsv[:, channel] = (hsv[:, channel] * scale + offset).clamp(0, 1)
    return (ops.hsv_to_rgb(hsv).clamp(0, 1) * 255.0).to(torch.uint8)


@pytest.mark.parametrize("sev", [1, 2, 3, 4, 5])
def test_hsv_corruptions_equal_the_tensor_formulas(sev):
    x = _images(6, seed=sev)
    assert torch.equal(C.corrupt(x, "brightness", sev),
                       _old_hsv(x, 2, 1.0, CIFAR_PARAMS["brightness"][sev - 1]))
    f, o = CIFAR_PARAMS["saturate"][sev - 1]
    assert torch.equal(C.corrupt(x, "saturate", sev), _old_hsv(x, 1, f, o))


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_on_a_colour_lattice(name):
    """Every colour of a 65^3 lattice of levels (0, 4, ..., 252, 255 per channel: all hue
    sectors, negative raw hues, grey pixels, saturation and value at both ends) at every
    severity: the block path equals the tensor formulas."""
    lv = np.r_[np.arange(0, 256, 4), 255].astype(np.uint8)
    rgb = np.stack(np.meshgrid(lv, lv, lv, indexing="ij"), -1).reshape(-1, 3)
    rgb = np.concatenate([rgb, np.zeros(((-len(rgb)) % 1024, 3), dtype=np.uint8)])
    x = torch.from_numpy(rgb.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2).contiguous()
    for sev in range(1, 6):
        if name == "brightness":
            want = _old_hsv(x, 2, 1.0, CIFAR_PARAMS["brightness"][sev - 1])
        else:
            want = _old_hsv(x, 1, *CIFAR_PARAMS["saturate"][sev - 1])
        assert torch.equal(C.corrupt(x, name, sev), want)


@pytest.mark.parametrize("sev", [1, 3, 5])
def test_contrast_table_equals_the_pixel_formula(sev):
    x = _images(6, seed=sev)
    c = CIFAR_PARAMS["contrast"][sev - 1]
    y = x.to(torch.float64) / 255.0
    mean = x.to(torch.int64).sum((2, 3), keepdim=True).to(torch.float64) / 1024.0 / 255.0
    want = (((y - mean) * c + mean).clamp(0, 1) * 255.0).to(torch.uint8)
    assert torch.equal(C.corrupt(x, "contrast", sev), want)


@pytest.mark.parametrize("sev", [1, 2, 3, 4, 5])
def test_defocus_cropped_kernel_equals_full_kernel(sev):
    x = _images(4, seed=sev)
    radius, alias = CIFAR_PARAMS["defocus_blur"][sev - 1]
    full = ops.disk_kernel(radius, alias)
    cropped = C._defocus_kernel(float(radius), float(alias))
    assert cropped.shape[0] < full.shape[0] and abs(cropped.sum() - full.sum()) < 1e-15
    y = x.to(torch.float32) / 255.0
    a = ops.filter2d(y, full, dtype=torch.float64)
    b = ops.filter2d(y, cropped, dtype=torch.float64)
    assert torch.allclose(a, b, atol=1e-12)


def test_cache_files_carry_the_stream_version(tmp_path):
    from test_scenarios_corruption import tiny_clean
    from test_scenarios_splits import build
    path = tiny_clean(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / "npz-gaussian_noise-5-seed0.npy"                     # a file of stream version 1
    np.save(stale, np.zeros((20, 3, 32, 32), dtype=np.uint8))
    s = build("scenario.name=corruption_stream", "scenario.dataset=npz", f"scenario.root={path}",
              "scenario.corruptions=[gaussian_noise]", f"scenario.cache_dir={cache}", seed=3)
    assert (cache / f"npz-gaussian_noise-5-seed0-streams{C.STREAM_VERSION}.npy").is_file()
    assert s.experiences[0].test.x.float().std() > 10                     # not the stale zeros


def _scipy_order_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Pixel-by-pixel transcription of scipy.ndimage.gaussian_filter(img / 255., (sigma, sigma, 0),
    mode="nearest") for one [H, W, C] uint8 image: scipy's taps, axis 0 then axis 1, each output
    v[i] * w[0] + (v[i - r] + v[i + r]) * w[r] + ... + (v[i - 1] + v[i + 1]) * w[1] (scipy's loop
    for symmetric kernels), edge-clamped indices; then uint8(clip(., 0, 1) * 255)."""
    r = int(4.0 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-0.5 / (sigma * sigma) * t ** 2)
    w = w / w.sum()
    w = w[r:]                                             # w[k]: tap at distance k

    def filt(v, axis):
        out = np.empty_like(v)
        n = v.shape[axis]
        for i in range(n):
            def at(k):
                return np.take(v, min(max(i + k, 0), n - 1), axis=axis)
            acc = at(0) * w[0]
            for k in range(r, 0, -1):
                acc = acc + (at(-k) + at(k)) * w[k]
            idx = [slice(None)] * v.ndim
            idx[axis] = i
            out[tuple(idx)] = acc
        return out

    y = filt(filt(img / 255.0, 0), 1)
    return np.uint8(np.clip(y, 0, 1) * 255)


@pytest.mark.parametrize("sev", [1, 2, 3, 4, 5])
def test_gaussian_blur_is_scipys_filter_in_scipys_order(sev):
    """Bit-identical to the reference's skimage/scipy gaussian (the same float64 operations in the
    same order), on 32x32 images with flat and saturated patches and on a 24x40 one."""
    x = _images(6, seed=sev)
    y = torch.from_numpy(np.random.default_rng(sev).integers(0, 256, (2, 3, 24, 40), dtype=np.uint8))
    for imgs in (x, y):
        sigma = CIFAR_PARAMS["gaussian_blur"][sev - 1]
        got = C.corrupt(imgs, "gaussian_blur", sev, params="cifar").permute(0, 2, 3, 1).numpy()
        hwc = imgs.permute(0, 2, 3, 1).numpy()
        want = np.stack([_scipy_order_blur(im, sigma) for im in hwc])
        assert np.array_equal(got, want)
        try:
            from scipy.ndimage import gaussian_filter
        except ImportError:
            continue
        ref = np.stack([np.uint8(np.clip(gaussian_filter(im / 255.0, (sigma, sigma, 0), mode="nearest"), 0, 1) * 255)
                        for im in hwc])
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("shape", [(9, 3, 32, 32), (2, 3, 24, 40), (1, 3, 224, 224)])
def test_defocus_blur_channels_last_equals_the_nchw_filter(shape):
    """The channels-last depthwise convolution of defocus blur gives the values of the plain
    ``ops.filter2d`` path (NCHW, reflect-101 padding first), bit for bit, at every severity."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(shape[-1]))
    table = C.PARAM_TABLES["cifar" if shape[-1] <= 40 else "imagenet"][0]["defocus_blur"]
    for sev, (radius, alias) in enumerate(table, 1):
        kernel = C._defocus_kernel(float(radius), float(alias))
        want = ops.filter2d(x.to(torch.float32).div_(255.0), kernel, mode="reflect101", dtype=torch.float32)
        want = want.clamp_(0, 1).mul_(255.0).to(torch.uint8)
        got = C.corrupt(x, "defocus_blur", sev, params="cifar" if shape[-1] <= 40 else "imagenet")
        assert torch.equal(got, want), f"severity {sev}: {int((got != want).sum())} values differ"
