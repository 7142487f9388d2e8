"""Our RMT against the authors' implementation (mariodoebler/test-time-adaptation,
``classification/methods/rmt.py``), side by side, same CPU.

The authors' code is not part of this repository: clone it yourself and point ``--reference`` at
the clone (or its ``classification`` folder):

    git clone https://github.com/mariodoebler/test-time-adaptation && \\
    python -m benchmarks.rmt_reference --reference test-time-adaptation --check [--batch 200] [--batches 5]

``--check`` builds the same CIFAR ResNet-20 twice (the ../shared weights when present, else a
random init from ``torch.manual_seed(0)``) and adapts one copy with the authors' ``RMT`` class and
the other with ``strategies/rmt.py``, with the same hyperparameters (ours at its defaults, which are
the authors' ``conf.py`` + ``cfgs/cifar10_c/rmt.yaml``: Adam lr 1e-3, EMA 0.999, SupCon temperature
0.1, projector 128, all three losses weighted 1), except the warm-up, shortened to
``--warmup-batches`` source batches (default 2; theirs is 50,000 samples) for time. Both get the same
labelled source data (seeded uniform-random images, labels cycling over the 10 classes, served in
the same batches in the same order), the same test batches (uniform-random images) and
``torch.manual_seed(7)`` before set-up (the projector's initialisation, then one augmented view per
batch drawn from torch's global generator). Printed: the largest absolute difference of the
source prototypes, of the predictions (student + teacher logits) of every batch (and of the first
batch alone, made before any test-time update), and of the student, teacher and projector weights
afterwards, in up to three columns:
  * ours as it is;
  * ours with its SupCon loss computed in the authors' floating-point steps (shift by the row
    maximum, log of the masked sum of exponentials) instead of our masked ``log_softmax``: the
    same loss mathematically. This column is 0 when everything else (prototypes, warm-up,
    augmentation, SCE, replay, EMA, ensembling, optimizer) computes exactly what theirs does;
  * with more than one thread, the authors' code against itself run on one thread: the scale of
    float-rounding differences, which Adam amplifies on weights whose gradient is about 0.
``--check`` exits with status 1 when the second column exceeds ``--tolerance`` (default 0) or the
first exceeds ``--as-is-tolerance`` (default 1e-2: rounding differences grow with every update, so
this bound is only meaningful for a few batches).
Without ``--check`` it times both (median seconds per batch, alternating). Without
``--reference`` it says how to get the code and exits 0 (so the suite can list it).

The shim (``load_reference`` / ``theirs``). ``methods/rmt.py`` is imported with the package
``__init__`` files bypassed (``methods/__init__.py`` imports every method and, through
``models/model.py``, timm, open_clip and robustbench) and two of its imports replaced; the
authors' classes themselves run unmodified:
  * ``models.model``: only ``split_up_model`` is used (and ``ResNetDomainNet126`` for an
    ``isinstance``); the stand-in splits our model at the input of its classifier head (a forward
    hook, ``cl.models.features``), i.e. what their split does for their CIFAR WRN: encoder = all
    but the final linear layer, classifier = that layer.
  * ``datasets.data_loading.get_source_loader``: returns a loader over the source tensors whose
    first pass is our source stream's first epoch (their replay/warm-up iterator is created
    first), whose second pass is the order in which our ``compute_prototypes`` reads the source
    (their prototype extraction), and further passes our later epochs (their iterator restarts on
    ``StopIteration``). Same data, same order: only the loader is ours.
  * their yacs config is replaced by a namespace holding the values listed above; prototypes and the
    warm-up checkpoint are written to a temporary ``CKPT_DIR`` (so neither is loaded from an old run).
"""
import argparse
import contextlib
import copy
import importlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import types

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cl.config import build_config
from cl.data import TensorData
from cl.models import build_model
from cl.models.features import classifier_head, features_and_logits
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
WEIGHTS = os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th")
NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
URL = "https://github.com/mariodoebler/test-time-adaptation"
PACKAGES = ("methods", "models", "datasets", "utils", "augmentations")
SEED = 7
AS_IS_TOLERANCE = 1e-2


# ---------------------------------------------------------------------------- the shim
def classification_folder(path):
    for cand in (path, os.path.join(path, "classification")):
        if os.path.isfile(os.path.join(cand, "methods", "rmt.py")):
            return cand
    raise SystemExit(f"no methods/rmt.py in {path} or {path}/classification: pass a clone of {URL}")


def load_reference(path):
    """The authors' ``methods.rmt`` module, imported from the clone at ``path`` with the stand-ins
    above; ``sys.modules`` is restored afterwards (their package names are generic: ``utils``,
    ``datasets``...)."""
    root = classification_folder(path)
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in PACKAGES}
    for k in saved:
        del sys.modules[k]
    try:
        for pkg in PACKAGES:                      # namespace-like packages: no __init__ runs
            m = types.ModuleType(pkg)
            m.__path__ = [os.path.join(root, pkg)]
            sys.modules[pkg] = m
        model_stub = types.ModuleType("models.model")
        model_stub.ResNetDomainNet126 = type("ResNetDomainNet126", (nn.Module,), {})
        model_stub.split_up_model = split_up_model
        sys.modules["models.model"] = model_stub
        data_stub = types.ModuleType("datasets.data_loading")
        data_stub.get_source_loader = None        # set per run in theirs()
        sys.modules["datasets.data_loading"] = data_stub
        return importlib.import_module("methods.rmt")
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
            del sys.modules[k]
        sys.modules.update(saved)


class Encoder(nn.Module):
    """The features entering ``model``'s classifier head (one forward of the whole model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return features_and_logits(self.model, x)[0]


def split_up_model(model, arch_name, dataset_name):
    """Stand-in for the authors' ``models.model.split_up_model``: (encoder, classifier)."""
    return Encoder(model), classifier_head(model)


class SourceLoader:
    """The source tensors in the batches and order our RMT reads them (see the module docstring):
    pass 1 = our epoch 0, pass 2 = our prototype order, pass k >= 3 = our epoch k - 2."""

    def __init__(self, source, batch_size, rmt_module):
        self.source, self.batch_size, self.passes = source, batch_size, 0
        self.seed = rmt_module.SOURCE_SEED          # our seeded source order (strategies/rmt.py)

    def __len__(self):
        return self.source.num_batches(self.batch_size)

    def __iter__(self):                 # counts the pass when iter() is called, not at the first next()
        self.passes += 1
        seed = self.seed if self.passes == 1 else self.seed - 1 if self.passes == 2 else self.seed + self.passes - 2
        order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(seed))
        return ((b.x, b.y) for b in self.source.subset(order).batches(self.batch_size))


def their_config(c, ckpt_dir):
    """The authors' cfg fields that RMT and TTAMethod read, from our config ``c``."""
    ns = types.SimpleNamespace
    return ns(MODEL=ns(ADAPTATION="rmt", ARCH="cifar_resnet20", EPISODIC=False, RESET_AFTER_NUM_UPDATES=0,
                       CKPT_PATH=""),
              CORRUPTION=ns(DATASET="cifar10_c"),
              OPTIM=ns(STEPS=1, METHOD="Adam", LR=c.lr, BETA=c.betas[0], WD=c.weight_decay),
              TEST=ns(BATCH_SIZE=c.batch_size, WINDOW_LENGTH=1),
              MIXED_PRECISION=False, DATA_DIR=ckpt_dir, CKPT_DIR=ckpt_dir,
              SOURCE=ns(NUM_SAMPLES=-1, PERCENTAGE=1.0, NUM_WORKERS=0),
              CONTRAST=ns(MODE="all", TEMPERATURE=c.temperature, PROJECTION_DIM=c.projection_dim),
              RMT=ns(LAMBDA_CE_SRC=c.lambda_ce_src, LAMBDA_CE_TRG=c.lambda_ce_trg, LAMBDA_CONT=c.lambda_cont,
                     NUM_SAMPLES_WARM_UP=c.warmup_samples),
              M_TEACHER=ns(MOMENTUM=c.ema_momentum))


def theirs(mod, model, cfg, source):
    """The authors' RMT on ``model`` (set up in its constructor: prototypes, warm-up)."""
    c = cfg.strategy
    loader = SourceLoader(source, c.batch_size, sys.modules["strategies.rmt"])
    mod.get_source_loader = lambda **kw: (None, loader)
    model.model_preprocess = None                 # read by their constructor; ours has none
    ckpt_dir = tempfile.mkdtemp(prefix="rmt_reference_")
    try:
        with contextlib.redirect_stderr(io.StringIO()):       # tqdm bar of the prototype extraction
            method = mod.RMT(their_config(c, ckpt_dir), model, num_classes=10)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if loader.passes != 2:
        raise SystemExit(f"the authors' RMT read its source loader {loader.passes} times during set-up "
                         "(expected 2: replay iterator, then prototypes); their code changed, update SourceLoader")
    return method


# ---------------------------------------------------------------------------- ours
def make_model(batch, warmup_batches):
    """The CIFAR ResNet-20 (../shared weights if present, else seeded random) and our run config."""
    have = os.path.isfile(WEIGHTS)
    cfg = build_config({"scenario": {"name": "synthetic_shift"},
                        "strategy": {"name": "rmt", "batch_size": batch, "warmup_samples": warmup_batches * batch},
                        "model": {"name": "cifar_resnet20", "checkpoint": WEIGHTS if have else None,
                                  "normalize": NORMALIZE}})
    torch.manual_seed(0)
    return build_model(cfg.model, 10, (3, 32, 32)), cfg, ("../shared weights" if have else "random init, seed 0")


def ours(model, cfg, source):
    """strategies/rmt.py set up on ``model`` with ``source`` as its labelled source data."""
    c = OmegaConf.to_object(cfg.strategy)
    stream = StreamInfo(protocol="online", num_experiences=1, batch_size=c.batch_size, num_classes=10,
                        input_shape=(3, 32, 32), has_source=True)
    s = STRATEGIES.get("rmt")(model, c, stream=stream, device="cpu")
    s.setup(source=source)
    return s


def make_source(n):
    g = torch.Generator().manual_seed(1)
    return TensorData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.arange(n) % 10)


# ---------------------------------------------------------------------------- check / timing
def largest(a, b):
    return max((float((u.detach() - v.detach()).abs().max()) for u, v in zip(a, b)), default=0.0)


def supcon_in_authors_arithmetic(strategy, views):
    """Our SupCon loss (``RMT.contrastive``) computed with the authors' floating-point steps: logits
    shifted by their (detached) row maximum, log of the masked sum of exponentials, positives as a
    0/1 mask. Mathematically the same loss as ours (a masked ``log_softmax``); used by ``--check``
    to show that this arithmetic is the only difference between the two implementations."""
    v, b, d = views.shape
    z = F.normalize(strategy.projector(views.reshape(v * b, d)), p=2, dim=1)
    logits = z @ z.t() / strategy.cfg.temperature
    logits = logits - logits.max(1, keepdim=True)[0].detach()
    not_self = 1.0 - torch.eye(v * b)
    positive = torch.eye(b).repeat(v, v) * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    return (-(positive * log_prob).sum(1) / positive.sum(1)).view(v, b).mean()


def run_ours(model, cfg, source, xs, authors_supcon):
    torch.manual_seed(SEED)
    s = ours(copy.deepcopy(model), cfg, source)
    if authors_supcon:
        s.contrastive = types.MethodType(supcon_in_authors_arithmetic, s)
    return s, [s.adapt(x).detach() for x in xs]


def run_theirs(mod, model, cfg, source, xs):
    torch.manual_seed(SEED)
    b = theirs(mod, copy.deepcopy(model), cfg, source)
    prototypes = b.prototypes_src.squeeze(1).clone()
    return b, prototypes, [b(x).detach() for x in xs]


def check(mod, model, cfg, source, xs):
    """Both from the same weights, source data and batches: {variant: {name: largest |difference|}}
    for ours as it is and ours with the SupCon loss in the authors' arithmetic; when running on
    more than one thread, also the authors' code against itself on one thread (the scale of
    float-rounding differences)."""
    b, prototypes_b, out_b = run_theirs(mod, model, cfg, source, xs)

    def diffs(prototypes, outs, student, teacher, projector):
        return {"prototypes": largest([prototypes], [prototypes_b]),
                "predictions": largest(outs, out_b),
                "first batch": largest(outs[:1], out_b[:1]),
                "student": largest(student.parameters(), b.model.parameters()),
                "teacher": largest(teacher.parameters(), b.model_ema.parameters()),
                "projector": largest(projector.parameters(), b.projector.parameters())}

    result = {}
    for variant, aligned in (("as is", False), ("authors' SupCon arithmetic", True)):
        a, out_a = run_ours(model, cfg, source, xs, aligned)
        result[variant] = diffs(a.prototypes, out_a, a.model, a.teacher, a.projector)
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        b1, prototypes_1, out_1 = run_theirs(mod, model, cfg, source, xs)
        torch.set_num_threads(threads)
        result["authors' code, 1 thread"] = diffs(prototypes_1, out_1, b1.model, b1.model_ema, b1.projector)
    c = cfg.strategy
    print(f"RMT, ours vs the authors' methods/rmt.py, {len(source)} source images, {c.warmup_samples // c.batch_size} "
          f"warm-up batches, {len(xs)} test batches of {len(xs[0])}, {threads} threads: largest |difference|")
    names = {"as is": "ours as is", "authors' SupCon arithmetic": "ours, authors' SupCon arithmetic",
             "authors' code, 1 thread": "authors' code on 1 thread"}
    print(f"  {'':12s}" + "".join(f"{names[v]:>36s}" for v in result))
    for k in result["as is"]:
        print(f"  {k:<12s}" + "".join(f"{result[v][k]:36.3e}" for v in result))
    print(f"  (largest |prediction| {max(float(v.abs().max()) for v in out_b):.2f}; the authors' student moved up "
          f"to {largest(b.model.parameters(), model.parameters()):.3e} from the source model)")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=os.environ.get("CL_RMT_REFERENCE"),
                   help=f"a clone of {URL} (or its classification/ folder; or $CL_RMT_REFERENCE)")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--warmup-batches", type=int, default=2, help="source warm-up steps for both (theirs: 250)")
    p.add_argument("--source-batches", type=int, default=3, help="size of the source set, in batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 16, 2 batches")
    p.add_argument("--check", action="store_true",
                   help="instead of timing: run both from the same seed and print the largest difference of "
                        "their prototypes, predictions and weights; exit 1 above the tolerances")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest allowed difference with our SupCon loss in the authors' arithmetic (default 0)")
    p.add_argument("--as-is-tolerance", type=float, default=AS_IS_TOLERANCE,
                   help=f"largest allowed difference of ours as it is (default {AS_IS_TOLERANCE:g}; see the docstring)")
    args = p.parse_args(argv)
    if not args.reference:
        print(f"skipped: pass --reference <clone of {URL}> (or set CL_RMT_REFERENCE) "
              "to compare the authors' RMT with ours")
        return None
    if args.quick:
        args.batch, args.batches = 16, 2
    torch.set_num_threads(args.threads)
    load_builtins()
    STRATEGIES.get("rmt")                          # imports strategies.rmt (its SOURCE_SEED is the source order)
    mod = load_reference(args.reference)
    model, cfg, origin = make_model(args.batch, args.warmup_batches)
    source = make_source(args.source_batches * args.batch)
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(args.batch, 3, 32, 32, generator=g) for _ in range(args.batches + 1)]
    print(f"CIFAR ResNet-20 ({origin}), CPU, {args.threads} threads, torch {torch.__version__}")
    if args.check:
        result = check(mod, model, cfg, source, xs[1:])
        aligned = max(result["authors' SupCon arithmetic"].values())
        as_is = max(result["as is"].values())
        if aligned > args.tolerance or as_is > args.as_is_tolerance:
            print(f"FAILED: largest difference {aligned:.3e} with the authors' SupCon arithmetic (tolerance "
                  f"{args.tolerance:.1e}), {as_is:.3e} as is (tolerance {args.as_is_tolerance:.1e})")
            sys.exit(1)
        print(f"OK: within {args.tolerance:.1e} with the authors' SupCon arithmetic, {args.as_is_tolerance:.1e} as is")
        return result
    torch.manual_seed(SEED)
    a = ours(copy.deepcopy(model), cfg, source)
    b = theirs(mod, copy.deepcopy(model), cfg, source)
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
    print(f"RMT, batch {args.batch}; median of {args.batches} alternating batches")
    print(f"  ours      {o:8.3f} s/batch")
    print(f"  authors'  {r:8.3f} s/batch")
    print(f"  speed-up  {r / o:8.2f}x")
    return o, r


if __name__ == "__main__":
    main()
