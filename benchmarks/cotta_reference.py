"""Seconds per batch of our CoTTA against the authors' implementation, side by side, same CPU.

The authors' code is not part of this repository: clone it yourself and point ``--reference`` at
its CIFAR folder (the one holding ``cotta.py`` and ``my_transforms.py``):

    git clone https://github.com/qinenergy/cotta && \\
    python -m benchmarks.cotta_reference --reference cotta/cifar [--batch 200] [--channels-last] [--check]

Both adapt the same CIFAR ResNet-20 (the ../shared weights when present, else a random init) on
the same batches, alternating batch by batch, with the CIFAR-10-C defaults (Adam 1e-3, EMA 0.999,
rst 0.01, 32 views) except ``--ap`` (default 1.0, so that both use the 32 views on every batch, the
common case on corrupted data). Two shims make the 2022 code run on a current CPU install, neither
of which changes what it computes: ``Tensor.cuda`` is the identity when there is no GPU (its
stochastic restore calls ``.cuda()``), and ``torchvision.transforms.RandomAffine`` accepts the
``resample=``/``fillcolor=`` keywords that torchvision renamed to ``interpolation=``/``fill=``.
The authors' CIFAR code computes the 32 augmented views on every batch; ours computes them only
when the anchor's confidence is below ``ap`` (the ImageNet code's behaviour); the fraction of our
batches that needed them is printed. Without ``--reference`` the script says how to get the code
and exits 0 (so the suite can list it). ``--check`` instead runs both from the same seed (ours with
``augment_always=true``) and prints the largest difference of predictions and weights.
"""
import argparse
import contextlib
import copy
import importlib
import io
import os
import statistics
import sys
import time

import torch

from cl.config import build_config
from cl.data import TensorData
from cl.models import build_model
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
WEIGHTS = os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th")
NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


def load_reference(folder):
    """Import the authors' cotta.py from ``folder`` with the two compatibility shims."""
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    if not os.path.isfile(os.path.join(folder, "cotta.py")):
        raise SystemExit(f"no cotta.py in {folder}: pass the 'cifar' folder of a clone of "
                         "https://github.com/qinenergy/cotta")
    base = T.RandomAffine

    class RandomAffine(base):  # torchvision < 0.13 keywords -> current ones
        def __init__(self, *args, resample=None, fillcolor=None, **kw):
            if resample is not None and "interpolation" not in kw:
                kw["interpolation"] = InterpolationMode.BILINEAR if int(resample) == 2 else InterpolationMode.NEAREST
            if "fill" not in kw:
                kw["fill"] = 0 if fillcolor is None else fillcolor
            super().__init__(*args, **kw)

    T.RandomAffine = RandomAffine
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, os.path.abspath(folder))
    return importlib.import_module("cotta")


def make_model(args):
    cfg = build_config({"scenario": {"name": "synthetic_shift"},
                        "strategy": {"name": "cotta", "batch_size": args.batch, "ap": args.ap},
                        "model": {"name": "cifar_resnet20", "channels_last": args.channels_last,
                                  "checkpoint": WEIGHTS if os.path.isfile(WEIGHTS) else None,
                                  "normalize": NORMALIZE}})
    return build_model(cfg.model, 10, (3, 32, 32)), cfg


def ours(model, cfg, **overrides):
    strategy_cfg = OmegaConf.to_object(cfg.strategy)
    for k, v in overrides.items():
        setattr(strategy_cfg, k, v)
    stream = StreamInfo(protocol="online", num_experiences=1, batch_size=strategy_cfg.batch_size, num_classes=10,
                        input_shape=(3, 32, 32))
    s = STRATEGIES.get("cotta")(model, strategy_cfg, device="cpu", stream=stream)
    s.setup(source=None)
    return s


def theirs(mod, model, ap):
    net = mod.configure_model(model)
    with contextlib.redirect_stdout(io.StringIO()):     # collect_params prints every parameter name
        params, _ = mod.collect_params(net)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    return mod.CoTTA(net, opt, steps=1, episodic=False, mt_alpha=0.999, rst_m=0.01, ap=ap)


def check(mod, model, cfg, ap, xs):
    """Same initial weights, same batches, ``torch.manual_seed(7)`` before each implementation's
    stream: the largest |difference| of the returned predictions and of the student, teacher and
    anchor weights afterwards."""
    torch.manual_seed(7)
    a = ours(copy.deepcopy(model), cfg, augment_always=True)
    out_a = [a.adapt(x) for x in xs]
    torch.manual_seed(7)
    b = theirs(mod, copy.deepcopy(model), ap)
    out_b = [b(x) for x in xs]

    def worst(pa, pb):
        return max(float((u.detach() - v.detach()).abs().max()) for u, v in zip(pa, pb))

    diffs = {"predictions": worst(out_a, out_b),
             "student": worst(a.model.parameters(), b.model.parameters()),
             "teacher": worst(a.teacher.parameters(), b.model_ema.parameters()),
             "anchor": worst(a.anchor.parameters(), b.model_anchor.parameters())}
    print(f"CoTTA, ours vs the authors' code, {len(xs)} batches of {len(xs[0])}, ap {ap}: largest |difference|")
    for k, v in diffs.items():
        print(f"  {k:<12s} {v:.3e}")
    return diffs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=os.environ.get("CL_COTTA_REFERENCE"),
                   help="the cifar/ folder of a clone of github.com/qinenergy/cotta (or $CL_COTTA_REFERENCE)")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="channels_last for both")
    p.add_argument("--ap", type=float, default=1.0,
                   help="anchor threshold for both (default 1.0: the augmented mean is used on every batch, as "
                        "on real corrupted data; the paper's 0.92 lets ours skip the views when the anchor is sure)")
    p.add_argument("--quick", action="store_true", help="batch 16, 2 batches")
    p.add_argument("--check", action="store_true",
                   help="instead of timing: run both from the same seed and print the largest difference of "
                        "their outputs and weights (ours with augment_always=true, which consumes random "
                        "numbers exactly as the CIFAR code does)")
    args = p.parse_args(argv)
    if not args.reference:
        print("skipped: pass --reference <clone of github.com/qinenergy/cotta>/cifar (or set CL_COTTA_REFERENCE) "
              "to time the authors' CoTTA next to ours")
        return None
    if args.quick:
        args.batch, args.batches = 16, 2
    torch.set_num_threads(args.threads)
    load_builtins()
    mod = load_reference(args.reference)
    model, cfg = make_model(args)
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(args.batch, 3, 32, 32, generator=g) for _ in range(args.batches + 1)]
    if args.check:
        return check(mod, model, cfg, args.ap, xs)
    a, b = ours(copy.deepcopy(model), cfg), theirs(mod, copy.deepcopy(model), args.ap)
    a.adapt(xs[0])                               # warm-up both
    b(xs[0])
    t_ours, t_ref, used = [], [], 0
    for x in xs[1:]:
        t0 = time.perf_counter()
        a.adapt(x)
        t1 = time.perf_counter()
        b(x)
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_ref.append(t2 - t1)
        used += bool(a.last_used_augmented)
    o, r = statistics.median(t_ours), statistics.median(t_ref)
    print(f"CoTTA, CIFAR ResNet-20, batch {args.batch}, {args.threads} threads, CPU"
          f"{', channels_last' if args.channels_last else ''}; median of {args.batches} alternating batches")
    print(f"  ours      {o:8.3f} s/batch (augmented views needed on {used}/{args.batches} batches)")
    print(f"  authors'  {r:8.3f} s/batch (views computed on every batch)")
    print(f"  speed-up  {r / o:8.2f}x")
    return o, r


if __name__ == "__main__":
    main()
