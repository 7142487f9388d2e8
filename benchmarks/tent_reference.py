"""Our Tent against the authors' implementation (DequanWang/tent ``tent.py``), side by side, same CPU.

The authors' code is not part of this repository: clone it yourself and point ``--reference`` at
the clone (the folder holding ``tent.py``):

    git clone https://github.com/DequanWang/tent && \\
    python -m benchmarks.tent_reference --reference tent --check [--batch 200] [--batches 5]

``--check`` builds the same CIFAR ResNet-20 twice (the ../shared weights when present, else a
random init from ``torch.manual_seed(0)``), adapts one copy with the authors' ``Tent`` (their
``configure_model``, ``collect_params`` and ``Tent`` wrapper, with Adam lr 1e-3, betas (0.9, 0.999),
weight decay 0, one step: their ``cfgs/tent.yaml`` and ``cifar10c.py:setup_optimizer``) and the
other with ``strategies/tent.py`` at its defaults (the same values), on the same batches (uniform
random images from a generator seeded 0), and prints the largest absolute difference of the
predictions (logits) of every batch and of every weight afterwards, plus how far each
implementation moved the weights it must not train (0 for both). ``--check`` exits with status 1
when a difference exceeds ``--tolerance`` (default 0: the two are bit-identical on CPU). Without
``--check`` it times both (median seconds per batch, alternating). Without ``--reference`` it says
how to get the code and exits 0 (so the suite can list it).

Nothing of the authors' code needs a shim: ``tent.py`` imports only torch.
"""
import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
import warnings

import torch

from cl.config import build_config
from cl.models import build_model
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
WEIGHTS = os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th")
NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
URL = "https://github.com/DequanWang/tent"


def load_reference(folder):
    """The authors' ``tent.py`` from ``folder`` as a module (named ``authors_tent``)."""
    path = os.path.join(folder, "tent.py")
    if not os.path.isfile(path):
        raise SystemExit(f"no tent.py in {folder}: pass the folder of a clone of {URL}")
    spec = importlib.util.spec_from_file_location("authors_tent", path)
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():         # their @torch.jit.script: deprecated in current torch
        warnings.filterwarnings("ignore", category=FutureWarning)
        spec.loader.exec_module(mod)
    return mod


def make_model(batch):
    """The CIFAR ResNet-20 (../shared weights if present, else seeded random) and our run config."""
    have = os.path.isfile(WEIGHTS)
    cfg = build_config({"scenario": {"name": "synthetic_shift"},
                        "strategy": {"name": "tent", "batch_size": batch},
                        "model": {"name": "cifar_resnet20", "checkpoint": WEIGHTS if have else None,
                                  "normalize": NORMALIZE}})
    torch.manual_seed(0)
    return build_model(cfg.model, 10, (3, 32, 32)), cfg, ("../shared weights" if have else "random init, seed 0")


def ours(model, cfg):
    """strategies/tent.py set up on ``model`` (the only place that builds our strategy)."""
    c = OmegaConf.to_object(cfg.strategy)
    stream = StreamInfo(protocol="online", num_experiences=1, batch_size=c.batch_size, num_classes=10,
                        input_shape=(3, 32, 32))
    s = STRATEGIES.get("tent")(model, c, stream=stream, device="cpu")
    s.setup()
    return s


def theirs(mod, model, cfg):
    """The authors' Tent, set up as their cifar10c.py does, with our config's optimizer values."""
    net = mod.configure_model(model)
    mod.check_model(net)
    params, _ = mod.collect_params(net)
    c = cfg.strategy
    opt = torch.optim.Adam(params, lr=c.lr, betas=(c.betas[0], 0.999), weight_decay=c.weight_decay)
    return mod.Tent(net, opt, steps=c.steps, episodic=False)


def largest(a, b):
    return max((float((u.detach() - v.detach()).abs().max()) for u, v in zip(a, b)), default=0.0)


def check(mod, model, cfg, xs):
    """Both from the same weights on the same batches: {name: largest |difference|}."""
    a = ours(copy.deepcopy(model), cfg)
    b = theirs(mod, copy.deepcopy(model), cfg)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    out_a = [a.adapt(x) for x in xs]
    out_b = [b(x) for x in xs]
    trained_ids = {id(p) for p in a.parameters_to_train()}
    trained = {n for n, p in a.model.named_parameters() if id(p) in trained_ids}
    params_a, params_b = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    diffs = {
        "predictions": largest(out_a, out_b),
        "adapted weights": largest([params_a[n] for n in sorted(trained)], [params_b[n] for n in sorted(trained)]),
        "all weights": largest(params_a.values(), params_b.values()),
    }
    frozen = sorted(set(init) - trained)
    moved_a = largest([params_a[n] for n in frozen], [init[n] for n in frozen])
    moved_b = largest([params_b[n] for n in frozen], [init[n] for n in frozen])
    adapted = largest([params_a[n] for n in sorted(trained)], [init[n] for n in sorted(trained)])
    print(f"Tent, ours vs the authors' tent.py, {len(xs)} batches of {len(xs[0])}: largest |difference|")
    for k, v in diffs.items():
        print(f"  {k:<16s} {v:.3e}")
    print(f"  ({len(trained)} adapted tensors moved up to {adapted:.3e} from the initial weights; the "
          f"{len(frozen)} frozen ones moved {moved_a:.1e} (ours) / {moved_b:.1e} (authors'))")
    return diffs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=os.environ.get("CL_TENT_REFERENCE"),
                   help=f"a clone of {URL} (or $CL_TENT_REFERENCE)")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 16, 2 batches")
    p.add_argument("--check", action="store_true",
                   help="instead of timing: run both on the same batches and print the largest difference "
                        "of their predictions and weights; exit 1 above --tolerance")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest allowed |difference| for --check (default 0: bit-identical)")
    args = p.parse_args(argv)
    if not args.reference:
        print(f"skipped: pass --reference <clone of {URL}> (or set CL_TENT_REFERENCE) "
              "to compare the authors' Tent with ours")
        return None
    if args.quick:
        args.batch, args.batches = 16, 2
    torch.set_num_threads(args.threads)
    load_builtins()
    mod = load_reference(args.reference)
    model, cfg, origin = make_model(args.batch)
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(args.batch, 3, 32, 32, generator=g) for _ in range(args.batches + 1)]
    print(f"CIFAR ResNet-20 ({origin}), CPU, {args.threads} threads, torch {torch.__version__}")
    if args.check:
        diffs = check(mod, model, cfg, xs[1:])
        worst = max(diffs.values())
        if worst > args.tolerance:
            print(f"FAILED: largest difference {worst:.3e} > tolerance {args.tolerance:.1e}")
            sys.exit(1)
        print(f"OK: within tolerance {args.tolerance:.1e}")
        return diffs
    a, b = ours(copy.deepcopy(model), cfg), theirs(mod, copy.deepcopy(model), cfg)
    a.adapt(xs[0])                               # warm-up both
    b(xs[0])
    t_ours, t_ref = [], []
    for x in xs[1:]:
        t0 = time.perf_counter()
        a.adapt(x)
        t1 = time.perf_counter()
        b(x)
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_ref.append(t2 - t1)
    o, r = statistics.median(t_ours), statistics.median(t_ref)
    print(f"Tent, batch {args.batch}; median of {args.batches} alternating batches")
    print(f"  ours      {o:8.4f} s/batch")
    print(f"  authors'  {r:8.4f} s/batch")
    print(f"  speed-up  {r / o:8.2f}x")
    return o, r


if __name__ == "__main__":
    main()
