"""Our CIFAR-10-C corruptions against the reference generator's outputs, per corruption and severity.

Needs ``../shared/data/cifar10c-golden`` (or ``$CL_SHARED/data/cifar10c-golden``): what Hendrycks &
Dietterich's ``make_cifar_c.py`` (hendrycks/robustness, ``ImageNet-C/create_c/make_cifar_c.py``)
produced on 100 clean CIFAR-10 images, with ``np.random.seed(1)`` before each (corruption,
severity) and the images taken one by one (see that folder's README). Frost reads its overlays
from ``../shared/data/frost``.

    python -m benchmarks.corruption_golden [--markdown]

Three measurements, each printed as one row per corruption (severities 1..5) with pass/fail:

1. **Deterministic corruptions** (the README's list: no random draw, or, for motion blur, one
   angle per image): mean |ours - reference| in uint8 levels; pass at <= 1.0. Motion blur's angle
   is the reference's draw, replayed (below).
2. **Random corruptions, reference draws replayed**: the reference's random numbers are a known
   sequence (numpy's legacy global stream from seed 1, image after image, HWC layout). A
   ``ReferenceDraws`` object hands exactly those numbers to our corruption function, in our CHW
   layout, image by image; the output must then match the reference pixel for pixel up to
   rounding: mean |difference| <= 1.0. This checks our algorithm, not our random stream.
3. **Random corruptions, our own random streams** (``corrupt(..., seed=s)``, the public API): the
   README's statistics against ``stats.json``: mean PSNR against the clean image within 0.5 dB and
   the standard deviation of (corrupted - clean) within 5%. The reference's statistics are one
   draw of 100 images; ours are averaged over seeds 0, 1, 2, so that the comparison is not
   dominated by our own sampling noise (the seed-to-seed spread of mean PSNR is up to 0.26 dB for
   frost at 100 images).

``tests/test_corruption_golden.py`` asserts the same thresholds case by case.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from scenarios.corruptions import ALL_CORRUPTIONS, corrupt
from scenarios.corruptions import _FUNCS          # the per-corruption functions behind corrupt()
from scenarios.corruptions._params import PARAM_TABLES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
GOLDEN = os.path.join(SHARED, "data", "cifar10c-golden")
FROST_DIR = os.path.join(SHARED, "data", "frost")

DETERMINISTIC = ("defocus_blur", "motion_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "gaussian_blur", "saturate")          # README / stats.json
RANDOM = tuple(c for c in ALL_CORRUPTIONS if c not in DETERMINISTIC)
MAX_MEAN_ABS_DIFF = 1.0      # uint8 levels (README)
MAX_PSNR_DB = 0.5            # README: "PSNR within 0.5 dB"
MAX_STD_REL = 0.05           # README: "the perturbation's standard deviation within 5%"
STAT_SEEDS = (0, 1, 2)


def available():
    return os.path.isfile(os.path.join(GOLDEN, "cifar10c_golden.npz"))


def load_golden():
    """(arrays, stats): the npz (uint8 HWC arrays ``clean``, ``<corruption>_<severity>``) and stats.json."""
    if not available():
        raise SystemExit(f"no golden set at {GOLDEN}: it lives in ../shared/data/cifar10c-golden "
                         "(set CL_SHARED to the folder holding data/cifar10c-golden)")
    arrays = dict(np.load(os.path.join(GOLDEN, "cifar10c_golden.npz")))
    with open(os.path.join(GOLDEN, "stats.json")) as f:
        return arrays, json.load(f)


def to_nchw(hwc):
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).contiguous()


def to_nhwc(nchw):
    return nchw.permute(0, 2, 3, 1).numpy()


def mean_abs_diff(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def statistics(out, clean):
    """The stats.json quantities of uint8 [N, H, W, C] ``out`` against ``clean``: mean PSNR (dB,
    per image, then averaged) and the standard deviation of (out - clean) over all values."""
    diff = out.astype(np.float64) - clean.astype(np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(1)
    psnr = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
    return {"psnr_db_mean": float(psnr.mean()), "std_diff": float(diff.std())}


class ReferenceDraws:
    """A ``numpy.random.Generator`` look-alike that returns the reference script's random numbers.

    The reference draws from numpy's legacy global stream (``np.random.seed(1)`` per corruption
    and severity, then image after image), on HWC arrays; our functions draw from one Generator
    per image, on CHW arrays. Handing one ``ReferenceDraws`` (shared by all images, called image by
    image) to our function makes it draw the reference's numbers in the reference's order:
    ``normal``/``poisson`` of a [3, H, W] array are drawn as [H, W, 3] and transposed; impulse
    noise's uniforms come from ``skimage.util.random_noise``'s own Generator, seeded (as the
    golden set's README says) with ``np.random.randint(2**31)`` from the legacy stream.
    """

    def __init__(self, seed=1):
        self.rs = np.random.RandomState(seed)

    def uniform(self, low, high, size=None):
        return self.rs.uniform(low, high, size)

    def integers(self, low, high=None, size=None):
        return self.rs.randint(low, high, size)

    def normal(self, loc, scale, size=None):
        if size is not None and len(size) == 3 and size[0] == 3:        # a CHW image
            return self.rs.normal(loc, scale, (size[1], size[2], 3)).transpose(2, 0, 1)
        return self.rs.normal(loc, scale, size)

    def poisson(self, lam):                                             # lam: a CHW image
        return self.rs.poisson(lam.transpose(1, 2, 0)).transpose(2, 0, 1)

    def random(self, size):
        """Impulse noise asks for [2, 3, H, W] uniforms (flip, salt); random_noise draws the
        flip mask then the salt mask, each [H, W, 3], from default_rng(legacy randint(2**31))."""
        g = np.random.default_rng(self.rs.randint(2 ** 31))
        return np.stack([g.random((size[2], size[3], size[1])).transpose(2, 0, 1) for _ in range(size[0])])


def replayed(clean_nchw, name, severity):
    """Our ``name`` at ``severity`` with the reference's random draws, image by image: uint8 NHWC."""
    table, extra = PARAM_TABLES["cifar"]
    draws = ReferenceDraws(seed=1)
    out = [_FUNCS[name](clean_nchw[i:i + 1], table[name][severity - 1], rngs=[draws], extra=extra,
                        frost_dir=FROST_DIR) for i in range(len(clean_nchw))]
    return to_nhwc(torch.cat(out))


def measure_deterministic(arrays, name, severity):
    """Mean |ours - reference| (uint8 levels); motion blur with the reference's angles."""
    ref = arrays[f"{name}_{severity}"]
    x = to_nchw(arrays["clean"])
    out = replayed(x, name, severity) if name == "motion_blur" else to_nhwc(corrupt(x, name, severity))
    return mean_abs_diff(out, ref)


def measure_replayed(arrays, name, severity):
    return mean_abs_diff(replayed(to_nchw(arrays["clean"]), name, severity), arrays[f"{name}_{severity}"])


def measure_statistics(arrays, stats, name, severity, seeds=STAT_SEEDS):
    """(|ΔPSNR| dB, |std ratio - 1|) of ours (mean over ``seeds``) against stats.json."""
    clean = arrays["clean"]
    x = to_nchw(clean)
    ours = [statistics(to_nhwc(corrupt(x, name, severity, seed=s, frost_dir=FROST_DIR)), clean) for s in seeds]
    ref = stats[f"{name}_{severity}"]
    psnr = float(np.mean([o["psnr_db_mean"] for o in ours]))
    std = float(np.mean([o["std_diff"] for o in ours]))
    return abs(psnr - ref["psnr_db_mean"]), abs(std / ref["std_diff"] - 1.0)


def table(title, header, rows, markdown):
    print(f"\n**{title}**\n" if markdown else f"\n{title}")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [header] + rows:
            print("  " + "  ".join(f"{c:>18s}" if i == 0 else f"{c:>13s}" for i, c in enumerate(r)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for BENCHMARKS.md)")
    p.add_argument("--quick", action="store_true", help="severity 3 only")
    args = p.parse_args(argv)
    if not available():
        print(f"skipped: no golden set at {GOLDEN} (../shared/data/cifar10c-golden; set CL_SHARED)")
        return None
    t0 = time.perf_counter()
    arrays, stats = load_golden()
    sevs = (3,) if args.quick else (1, 2, 3, 4, 5)
    sev_cols = [f"sev {s}" for s in sevs]
    failed = []

    rows = []
    for name in DETERMINISTIC:
        vals = [measure_deterministic(arrays, name, s) for s in sevs]
        ok = all(v <= MAX_MEAN_ABS_DIFF for v in vals)
        failed += [] if ok else [name]
        rows.append([name] + [f"{v:.3f}" for v in vals] + ["pass" if ok else "FAIL"])
    table(f"1. deterministic: mean |ours - reference| (uint8 levels; pass <= {MAX_MEAN_ABS_DIFF}; "
          "motion blur with the reference's angles)", ["corruption"] + sev_cols + ["result"], rows, args.markdown)

    rows = []
    for name in RANDOM:
        vals = [measure_replayed(arrays, name, s) for s in sevs]
        ok = all(v <= MAX_MEAN_ABS_DIFF for v in vals)
        failed += [] if ok else [f"{name} (replayed)"]
        rows.append([name] + [f"{v:.3f}" for v in vals] + ["pass" if ok else "FAIL"])
    table(f"2. random, the reference's draws replayed: mean |ours - reference| (pass <= {MAX_MEAN_ABS_DIFF})",
          ["corruption"] + sev_cols + ["result"], rows, args.markdown)

    rows = []
    for name in RANDOM:
        vals = [measure_statistics(arrays, stats, name, s) for s in sevs]
        ok = all(dp <= MAX_PSNR_DB and ds <= MAX_STD_REL for dp, ds in vals)
        failed += [] if ok else [f"{name} (statistics)"]
        rows.append([name] + [f"{dp:.2f} / {100 * ds:.1f}%" for dp, ds in vals] + ["pass" if ok else "FAIL"])
    table(f"3. random, our own streams (seeds {', '.join(map(str, STAT_SEEDS))} averaged) vs stats.json: "
          f"|ΔPSNR| dB / |Δstd| (pass <= {MAX_PSNR_DB} dB and <= {100 * MAX_STD_REL:.0f}%)",
          ["corruption"] + sev_cols + ["result"], rows, args.markdown)
    print(f"\n{'all pass' if not failed else 'FAILING: ' + ', '.join(failed)} "
          f"({time.perf_counter() - t0:.1f} s)")
    return failed


if __name__ == "__main__":
    main()
