"""Tests for scenarios.corruptions (CIFAR-10-C / ImageNet-C corruptions)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from scenarios import corruptions as C
except ImportError:  # running pytest without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenarios import corruptions as C
from scenarios.corruptions import _ops as ops
from scenarios.corruptions._params import CIFAR_PARAMS, IMAGENET_PARAMS

from PIL import Image

SHARED_FROST = Path(__file__).resolve().parents[2] / "shared" / "data" / "frost"


def _smooth_images(n=6, h=32, w=32, seed=0):
    """Natural-ish test images: smooth colour gradients, a square, mild noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    imgs = []
    for k in range(n):
        a = torch.rand(3, 3, generator=g)
        img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy + 0.3 * a[:, 2, None, None]
        img[:, h // 4: h // 2, w // 3: 2 * w // 3] += 0.3
        img = img / img.max() * 0.9 + 0.03 * torch.rand(3, h, w, generator=g)
        imgs.append(img)
    return (torch.stack(imgs).clamp(0, 1) * 255).to(torch.uint8)


def _constant(rgb, n=2, h=32, w=32):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, h, w).contiguous()


def _write_frost(d, textured):
    for k, name in enumerate(C.FROST_FILES):
        arr = np.full((200 + 10 * k, 220, 3), 200, dtype=np.uint8)
        if textured:
            rng = np.random.default_rng(k)
            arr = rng.integers(0, 256, arr.shape, dtype=np.uint8)
        Image.fromarray(arr).save(d / name, quality=100)
    return d


@pytest.fixture(scope="module")
def frost_dir(tmp_path_factory):
    """Synthetic textured frost overlays in the format of the real ones
    (PNG/JPEG, large enough for a 32x32 crop after the 0.2 down-scaling)."""
    return _write_frost(tmp_path_factory.mktemp("frost"), textured=True)


@pytest.fixture(scope="module")
def flat_frost_dir(tmp_path_factory):
    """Constant (200) synthetic frost overlays, for hand-computed values."""
    return _write_frost(tmp_path_factory.mktemp("flatfrost"), textured=False)


def _mad(a, b):
    return (a.float() - b.float()).abs().mean().item()


# ------------------------------------------------------------------ API


def test_lists():
    assert len(C.CORRUPTIONS) == 15 and len(C.EXTRA_CORRUPTIONS) == 4
    assert C.CORRUPTIONS[0] == "gaussian_noise" and C.CORRUPTIONS[-1] == "jpeg_compression"
    assert set(CIFAR_PARAMS) == set(IMAGENET_PARAMS) == set(C.ALL_CORRUPTIONS)
    for table in (CIFAR_PARAMS, IMAGENET_PARAMS):
        assert all(len(v) == 5 for v in table.values())


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_shape_dtype_cifar(name, frost_dir):
    x = _smooth_images(3)
    for sev in (1, 5):
        y = C.corrupt(x, name, sev, seed=1, frost_dir=frost_dir)
        assert y.shape == x.shape and y.dtype == torch.uint8
    assert not torch.equal(C.corrupt(x, name, 5, seed=1, frost_dir=frost_dir), x)


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_shape_dtype_other_size_imagenet_params(name, frost_dir):
    x = _smooth_images(2, h=40, w=48)
    y = C.corrupt(x, name, 3, seed=0, frost_dir=frost_dir)  # params default to imagenet
    assert y.shape == x.shape and y.dtype == torch.uint8


def test_single_image_and_empty_batch():
    x = _smooth_images(1)
    y = C.corrupt(x[0], "contrast", 2)
    assert y.shape == (3, 32, 32)
    assert torch.equal(y, C.corrupt(x, "contrast", 2)[0])
    assert C.corrupt(x[:0], "fog", 2).shape == (0, 3, 32, 32)


def test_params_default_and_explicit():
    assert C.resolve_params(None, 32, 32) == "cifar"
    assert C.resolve_params(None, 224, 224) == "imagenet"
    x = _smooth_images(2)
    a = C.corrupt(x, "gaussian_blur", 3)
    b = C.corrupt(x, "gaussian_blur", 3, params="cifar")
    c = C.corrupt(x, "gaussian_blur", 3, params="imagenet")
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [
    dict(name="fogg"), dict(severity=0), dict(severity=6), dict(severity=2.0),
    dict(severity=True), dict(seed=-1), dict(params="tiny"),
])
def test_bad_arguments(bad):
    kw = dict(name="fog", severity=1, seed=0)
    kw.update(bad)
    with pytest.raises(ValueError) as err:
        C.corrupt(_smooth_images(1), **kw)
    if "name" in bad:
        assert "gaussian_noise" in str(err.value) and "saturate" in str(err.value)
    if "severity" in bad:
        assert "1, 2, 3, 4, 5" in str(err.value)


def test_bad_images():
    x = _smooth_images(1)
    with pytest.raises(ValueError, match="uint8"):
        C.corrupt(x.float(), "fog", 1)
    with pytest.raises(ValueError, match="shape"):
        C.corrupt(x[:, :1], "fog", 1)
    with pytest.raises(TypeError):
        C.corrupt(x.numpy(), "fog", 1)
    with pytest.raises(ValueError, match="indices"):
        C.corrupt(x, "fog", 1, indices=[0, 1])


def test_frost_missing_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(C.FROST_ENV, raising=False)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        C.corrupt(_smooth_images(1), "frost", 1, frost_dir=missing)
    msg = str(err.value)
    assert str(missing) in msg and "imagecorruptions" in msg and "frost1.png" in msg


def test_frost_env_var(frost_dir, monkeypatch):
    monkeypatch.setenv(C.FROST_ENV, str(frost_dir))
    x = _smooth_images(2)
    assert torch.equal(C.corrupt(x, "frost", 2), C.corrupt(x, "frost", 2, frost_dir=frost_dir))


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_seed_determinism_and_batch_independence(name, frost_dir):
    x = _smooth_images(4)
    a = C.corrupt(x, name, 4, seed=7, frost_dir=frost_dir)
    b = C.corrupt(x, name, 4, seed=7, frost_dir=frost_dir)
    assert torch.equal(a, b)
    # same image index -> same output, whatever the rest of the batch is
    part = C.corrupt(x[2:], name, 4, seed=7, frost_dir=frost_dir, indices=[2, 3])
    assert torch.equal(part, a[2:])


@pytest.mark.parametrize("name", C.RANDOM_CORRUPTIONS)
def test_different_seeds_differ(name, frost_dir):
    x = _smooth_images(4)
    a = C.corrupt(x, name, 5, seed=0, frost_dir=frost_dir)
    b = C.corrupt(x, name, 5, seed=1, frost_dir=frost_dir)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(set(C.ALL_CORRUPTIONS) - set(C.RANDOM_CORRUPTIONS)))
def test_deterministic_corruptions_ignore_seed(name):
    x = _smooth_images(2)
    assert torch.equal(C.corrupt(x, name, 3, seed=0), C.corrupt(x, name, 3, seed=123))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                                  "defocus_blur", "zoom_blur", "contrast", "brightness",
                                  "gaussian_blur", "fog", "snow"])
def test_severity_monotone(name):
    x = _smooth_images(8)
    mads = [_mad(C.corrupt(x, name, s, seed=3), x) for s in range(1, 6)]
    assert all(b > a for a, b in zip(mads, mads[1:])), mads


# ------------------------------------------------------------------ hand-checked values


def test_brightness_by_hand():
    # gray 100: V = 100/255 + 0.05 (cifar severity 1) -> 112.75 -> 112
    y = C.corrupt(_constant((100, 100, 100)), "brightness", 1)
    assert (y == 112).all()
    # (200, 100, 50), severity 5 (+0.3): V saturates at 1, hue and saturation
    # kept, so every channel scales by 255/200 -> (255, 127.5, 63.75)
    y = C.corrupt(_constant((200, 100, 50)), "brightness", 5)
    assert y[:, :, 0, 0].tolist() == [[255, 127, 63]] * 2
    # black stays hue-less: V = 0 + 0.3 -> 76.5 on all channels
    y = C.corrupt(_constant((0, 0, 0)), "brightness", 5)
    assert (y == 76).all()


def test_contrast_by_hand():
    y = C.corrupt(_constant((10, 120, 240)), "contrast", 5)
    # constant image = its mean (up to the float -> uint8 truncation)
    assert (y.int() - _constant((10, 120, 240)).int()).abs().max() <= 1
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x[:, :, :, 16:] = 100                              # mean 50; factor 0.15 (cifar sev 5)
    y = C.corrupt(x, "contrast", 5)
    assert (y[:, :, :, :16] == 42).all() and (y[:, :, :, 16:] == 57).all()  # 42.5 / 57.5


def test_saturate_by_hand():
    # (200, 100, 50): h = 1/18, s = 0.75, v = 200.  cifar sev 1: s -> 0.225
    # -> (v, v (1 - (1 - f) s), v (1 - s)) with f = 1/3 = (200, 170, 155)
    y = C.corrupt(_constant((200, 100, 50)), "saturate", 1)[0, :, 0, 0]
    assert (y.int() - torch.tensor([200, 170, 155])).abs().max() <= 1
    # gray 200, sev 5 (s*2.5 + 0.2): s = 0.2, h = 0 -> (200, 160, 160)
    y = C.corrupt(_constant((200, 200, 200)), "saturate", 5)[0, :, 0, 0]
    assert (y.int() - torch.tensor([200, 160, 160])).abs().max() <= 1


def test_frost_by_hand(flat_frost_dir):
    # synthetic overlays are constant 200; cifar sev 1 = 1 * x + 0.2 * frost
    y = C.corrupt(_constant((100, 50, 250)), "frost", 1, frost_dir=flat_frost_dir)
    assert y[0, :, 0, 0].tolist() == [140, 90, 255]


def test_gaussian_noise_statistics():
    x = _constant((128, 128, 128), n=8)
    y = C.corrupt(x, "gaussian_noise", 5, seed=0).double()  # std 0.10 -> 25.5
    assert abs(y.mean().item() - 128) < 1.0
    assert abs(y.std().item() - 25.5) < 1.0


def test_impulse_noise_fraction():
    x = _constant((128, 128, 128), n=8)
    y = C.corrupt(x, "impulse_noise", 5, seed=0)      # amount 0.07
    frac = ((y == 0) | (y == 255)).double().mean().item()
    assert abs(frac - 0.07) < 0.01
    assert ((y == 128) | (y == 0) | (y == 255)).all()


@pytest.mark.parametrize("name", ["defocus_blur", "gaussian_blur", "motion_blur", "zoom_blur",
                                  "glass_blur", "pixelate", "elastic_transform"])
@pytest.mark.parametrize("params", ["cifar", "imagenet"])
def test_constant_images_unchanged_by_geometric_corruptions(name, params):
    x = _constant((60, 130, 200), n=2, h=32, w=32)
    y = C.corrupt(x, name, 5, seed=0, params=params)
    # glass blur truncates to uint8 twice; the ImageNet defocus kernels for
    # radius >= 8 sum to ~1.01 (reference behaviour: the disk touches the
    # border of its grid before anti-aliasing with reflect-101 borders)
    tol = 2 if name == "glass_blur" else 1
    if name == "defocus_blur" and params == "imagenet":
        tol = 0.015 * 200 + 1
    assert (y.int() - x.int()).abs().max() <= tol


def test_motion_taps():
    w, dr, dc = ops.motion_taps(6, 1, 0.0)
    assert len(w) == 13 and abs(w.sum() - 1) < 1e-12 and w[0] > w[1] > w[2]
    assert dr.tolist() == [0] * 13 and dc.tolist() == list(range(13))
    _, dr, dc = ops.motion_taps(6, 1, 90.0)
    assert dc.tolist() == [0] * 13 and dr.tolist() == list(range(13))


def test_box_resize_matrix():
    m = ops.box_resize_matrix(32, 16)
    assert torch.allclose(m.sum(1), torch.ones(16, dtype=torch.float64))
    assert m[0, 0] == m[0, 1] == 0.5
    up = ops.box_resize_matrix(16, 32)                 # nearest neighbour
    assert (up.max(1).values == 1).all()


def test_hsv_roundtrip():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(ops.hsv_to_rgb(ops.rgb_to_hsv(x)), x, atol=1e-12)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_FROST.is_dir(), reason="real frost images not available")
def test_real_frost_images():
    x = _smooth_images(4)
    y = C.corrupt(x, "frost", 5, seed=0, frost_dir=SHARED_FROST)
    assert y.shape == x.shape and _mad(y, x) > 10
