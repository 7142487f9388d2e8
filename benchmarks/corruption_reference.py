"""Corruption generation: ours against the reference CIFAR-10-C generator, side by side, per corruption.

The reference is ``make_cifar_c.py`` of Hendrycks & Dietterich's repository (not part of this one):

    git clone https://github.com/hendrycks/robustness
    pip install wand scikit-image opencv-python-headless scipy   # + ImageMagick (apt: libmagickwand-dev)
    python -m benchmarks.corruption_reference --reference robustness/ImageNet-C/create_c/make_cifar_c.py

For each corruption and severity it times the reference (``np.random.seed(1)``, then the reference
function image by image on ``convert_img(img)`` and ``np.uint8(...)`` of its output, exactly the loop of
the reference script) and ours (``scenarios.corruptions.corrupt`` on the same uint8 images, in chunks
of ``--batch``), alternating which runs first, on ``--threads`` threads (default 1), and prints the
ratio reference / ours of CPU seconds (the process is single-threaded, so CPU time is wall time on an
idle machine and robust on a shared one). For deterministic corruptions it also prints the mean
|ours - reference| of the outputs of that same run (uint8 levels; the golden-set bound is 1.0).

How the reference is loaded, without changing what it computes: the file is read, the part after its
corruption functions (which loads CIFAR-10 from the authors' paths and writes .npy files) is dropped,
and the compatibility edits of ``../shared/data/cifar10c-golden/README.md`` are applied (numpy 2:
``np.float64`` for ``np.float_``, ``np.frombuffer`` for ``np.fromstring``; current scikit-image:
``channel_axis=-1`` for ``multichannel=True``, ``rng=`` from the global numpy stream for impulse noise;
``scipy.ndimage.map_coordinates``). Frost reads its overlays from the reference's own folder.

Images: the 100 clean images of ``../shared/data/cifar10c-golden`` repeated to ``--n`` when present,
else uniform random images (a stand-in: timings only). Without ``--reference`` it says how to get the
reference and exits 0.
"""
import argparse
import os
import re
import statistics
import sys
import time
import types

import numpy as np
import torch

from scenarios.corruptions import ALL_CORRUPTIONS, corrupt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
GOLDEN = os.path.join(SHARED, "data", "cifar10c-golden", "cifar10c_golden.npz")
# outputs compared in the same run (motion blur is deterministic but for one random angle per image)
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "gaussian_blur", "saturate")

# (pattern, replacement): the golden set's compatibility edits, applied to the reference's text
COMPAT = [
    (r"np\.float_\b", "np.float64"),
    (r"np\.fromstring\(", "np.frombuffer("),
    (r"multichannel=True", "channel_axis=-1"),
    (r"from scipy\.ndimage\.interpolation import map_coordinates", "from scipy.ndimage import map_coordinates"),
    (r"mode='s&p', amount=c\)", "mode='s&p', amount=c, rng=np.random.randint(2**31))"),
]


def load_reference(path: str) -> types.ModuleType:
    """The reference's corruption functions as a module (see the docstring for the edits)."""
    if os.path.isdir(path):
        path = os.path.join(path, "ImageNet-C", "create_c", "make_cifar_c.py")
    if not os.path.isfile(path):
        sys.exit(f"error: --reference {path!r} is not make_cifar_c.py nor a clone of hendrycks/robustness; "
                 "pass the file ImageNet-C/create_c/make_cifar_c.py of a clone.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = text.find("# /////////////// End Distortions ///////////////")
    if cut < 0:
        sys.exit(f"error: {path} does not look like make_cifar_c.py (no 'End Distortions' marker).")
    text = text[:cut]
    for pattern, repl in COMPAT:
        text = re.sub(pattern, repl, text)
    mod = types.ModuleType("make_cifar_c_reference")
    mod.__file__ = path
    try:
        exec(compile(text, path, "exec"), mod.__dict__)
    except ImportError as e:
        sys.exit(f"error: the reference needs {e.name!r}: pip install wand scikit-image opencv-python-headless "
                 "scipy (and ImageMagick's libmagickwand for wand).")
    import torchvision.transforms as trn
    mod.convert_img = trn.Compose([trn.ToTensor(), trn.ToPILImage()])
    return mod


def images(n: int, seed: int = 0) -> np.ndarray:
    """[n, 32, 32, 3] uint8: the golden set's clean images repeated, else random (stand-in)."""
    if os.path.isfile(GOLDEN):
        clean = np.load(GOLDEN)["clean"]
        return np.ascontiguousarray(np.resize(clean, (n,) + clean.shape[1:]))
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def run_reference(ref, name, severity, imgs):
    fn = getattr(ref, name)
    np.random.seed(1)
    c0 = time.process_time()
    out = [np.uint8(fn(ref.convert_img(img), severity)) for img in imgs]
    return time.process_time() - c0, np.stack(out)


def run_ours(name, severity, imgs, batch, frost_dir):
    c0 = time.process_time()
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    outs = [corrupt(x[s:s + batch], name, severity, seed=0, frost_dir=frost_dir, indices=range(s, min(s + batch, len(x))))
            for s in range(0, len(x), batch)]
    out = torch.cat(outs).permute(0, 2, 3, 1).numpy()
    return time.process_time() - c0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=os.environ.get("CL_CORRUPTION_REFERENCE"),
                   help="make_cifar_c.py of a hendrycks/robustness clone (or the clone's folder)")
    p.add_argument("--n", type=int, default=1000, help="images per (corruption, severity) (default 1000)")
    p.add_argument("--quick", action="store_true", help="20 images, severities 1 and 5 (harness check)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--corruptions", nargs="+", default=list(ALL_CORRUPTIONS), choices=ALL_CORRUPTIONS)
    p.add_argument("--batch", type=int, default=500, help="images per corrupt() call (default 500)")
    p.add_argument("--repeats", type=int, default=1, help="alternating repeats; the median ratio is kept")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = p.parse_args(argv)
    if not args.reference:
        print("corruption_reference: skipped (no --reference / $CL_CORRUPTION_REFERENCE; clone "
              "https://github.com/hendrycks/robustness and pass ImageNet-C/create_c/make_cifar_c.py)")
        return
    if args.quick:
        args.n, args.severities = 20, [1, 5]
    torch.set_num_threads(args.threads)
    ref = load_reference(args.reference)
    try:
        import cv2
        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    ref_dir = os.path.dirname(os.path.abspath(ref.__file__))
    imgs = images(args.n)
    print(f"# {args.n} images ({'golden-set CIFAR-10 images' if os.path.isfile(GOLDEN) else 'random stand-in'}), "
          f"batch {args.batch}, {args.threads} thread(s), CPU seconds, ratio = reference / ours")
    print(f"{'corruption':18s} {'sev':>3s} {'ref s':>8s} {'ours s':>8s} {'ratio':>7s} {'mean|d|':>8s}")
    rows = []
    cwd = os.getcwd()
    for name in args.corruptions:
        run_ours(name, 1, imgs[:2], args.batch, ref_dir)     # warm-up: caches (frost overlays, operators)
        ratios = []
        for sev in args.severities:
            t_ref, t_ours, diff = [], [], None
            for rep in range(args.repeats):
                order = ("ref", "ours") if rep % 2 == 0 else ("ours", "ref")
                for side in order:
                    if side == "ref":
                        os.chdir(ref_dir)            # frost reads ./frost*.png
                        try:
                            t, out_ref = run_reference(ref, name, sev, imgs)
                        finally:
                            os.chdir(cwd)
                        t_ref.append(t)
                    else:
                        t, out_ours = run_ours(name, sev, imgs, args.batch, ref_dir)
                        t_ours.append(t)
            if name in DETERMINISTIC:
                diff = float(np.abs(out_ours.astype(np.int16) - out_ref.astype(np.int16)).mean())
            r, o = statistics.median(t_ref), statistics.median(t_ours)
            ratios.append(r / o)
            print(f"{name:18s} {sev:3d} {r:8.3f} {o:8.3f} {r / o:7.1f} "
                  f"{'' if diff is None else f'{diff:8.3f}'}", flush=True)
        rows.append((name, min(ratios), max(ratios)))
    if args.markdown:
        print("\n| corruption | ratio reference / ours (min-max over severities) |\n|---|---|")
        for name, lo, hi in rows:
            print(f"| {name} | {lo:.1f}-{hi:.1f}x |")


if __name__ == "__main__":
    main()
