"""Our ITTA (``strategies/itta.py``) against the authors' code, liangchen527/ITTA, side by side.

The authors' code is not part of this repository: clone it yourself and point ``--reference`` at
the clone (the folder holding ``domainbed/``):

    git clone https://github.com/liangchen527/ITTA && \\
    python -m benchmarks.itta_reference --reference ITTA --check

``--check`` builds both on the same network and data, with the same torch seed, then
  1. trains: ``--steps`` calls of their ``ITTA.update`` on minibatches of ``--domains`` source
     domains (``--per-domain`` images each) against our ``warm_up`` on the same minibatches (ours
     reads its source batches from its own seeded generator; theirs is handed the same batches,
     split per domain, in the same order);
  2. tests: ``--batches`` test batches of ``--test-batch`` images through their
     ``misc.accuracy_tsc`` (per batch ``test_adapt``, then ``predict`` under ``eval``/``no_grad``)
     against our ``adapt`` (``forward_and_adapt``: adapt, then predict), with the torch seed set to
     the same value before each test batch on both sides;
and prints the largest |difference| of the predictions, of the network weights (after training;
frozen at test time), of the adaparams (the learned consistency loss A) and of the test-time mapping
blocks, next to how far each moved from its initial value. It then repeats the test phase from one
trained state (ours reset to its post-training snapshot, a fresh copy of theirs given our trained
weights and adaparams), reporting the mapping after the first test batch separately. Hyper-parameters
on both sides: their ``hparams_registry.default_hparams('ITTA', 'PACS')`` (lr 5e-5, weight decay 0,
ada_lr 1e-6), with the batch size set to ``--per-domain``; ``--lr`` / ``--ada-lr`` change both alike.

Precision (``--dtype``, default both): in float64 (network, data, blocks and Beta draws; ours behind
an identity ``InputNormalize`` that promotes its float32 source batches) rounding is ~1e-16, so any
difference in what the two compute shows up; float32 is what runs. Two things make float32 results
differ by more than rounding although the computations are the same:
  * ours forwards and backpropagates one batch [x; MixStyle(x)] after the mixing stage where theirs
    runs two branches, and their ``l2_between_dicts`` concatenates the gradients in sorted-name order
    where ours uses module order: the weight gradients differ at rounding level (~1e-7 relative), and
    Adam's first steps, update = lr * g / (|g| + 1e-8), turn rounding differences in elements with
    |g| near 1e-8 into update differences up to the lr itself;
  * ReLU kinks: where the true gradient of a mapping bias is 0 (the z_ori and z_aug branches cancel),
    rounding leaves that bias at +-1e-40 after one Adam step, with opposite signs on the two sides;
    where that bias's input is 0 the next ReLU is then on in one and off in the other, and from the
    second test batch on the two mappings differ in such elements by up to their whole movement
    (also in float64); end to end, the rounding-level differences of the trained weights and
    adaparams can flip such kinks from the first test batch on (``--quick``: a batch of 2 whose
    test loss is mostly rounding). The mapping after the first test batch from the same trained
    state, and the predictions, do not show it.
The float64 run ends with a verdict: predictions, weights, adaparams and the first-batch mapping must
agree within 1e-9 (else exit 1).

Network and data: their ``ResNet_ITTA`` is ResNet-18 at 224 px (their ``MappingNetwork`` and
``Adaparams`` have fixed shapes 64x56x56 ... 512x7x7 and 512) with ImageNet weights downloaded by
torchvision. Here both sides get one torchvision ResNet-18 with a seeded random init (no download;
BatchNorm running statistics set from one pass over random images, so that the frozen BN keeps
activations in range), 7 classes (PACS), and uniform random 224 px images with random labels (the
figures only show that the two computations agree). Ours is that network with its ``fc`` head;
theirs gets a copy of it as ``featurizer.network`` (they replace ``fc`` by an identity) and the
same ``fc`` weights in their separate ``classifier``.

How the authors' code is loaded, without changing what it computes:
  * ``algorithms.py`` does not import as a whole (class RIDG mixes tabs and spaces: a TabError), so
    only its classes ``Algorithm`` and ``ITTA`` are cut out of the text and executed, with their
    file's imports (``torch``, ``nn``, ``F``, ``OrderedDict``, ``networks``, ``l2_between_dicts``);
  * from ``networks.py`` only ``Identity``, ``MappingNetwork``, ``Adaparams``, ``ResNet_ITTA`` and
    ``Classifier`` are executed (ast-extracted), with ``torchvision.models.resnet18(pretrained=True)``
    answering a copy of the shared random-init network instead of downloading ImageNet weights;
  * ``lib/misc.py`` (``l2_between_dicts``, ``accuracy_tsc``) and ``hparams_registry.py`` are imported
    whole, file by file, under a stand-in ``domainbed`` package (its ``__init__`` is not run);
  * random draws: their ``ResNet_ITTA.forward`` picks the MixStyle stage with Python's
    ``random.random() > 0.5`` (after stage 1, else after stage 2), ours with ``torch.rand(()) < 0.5``
    (after ``layer1``, else after ``layer2``); the ``random`` module seen by their ``networks`` code
    is replaced by one whose ``random()`` returns ``1 - u`` for ``u = torch.rand(())``, a uniform
    draw as before, so both pick the same stage from the same torch draw. The MixStyle draws
    themselves (Beta(0.1, 0.1) ``lmda``, ``randperm``) come from torch's generator on both sides and
    in the same order (stage draw, lmda, permutation, for each of the two forwards of a training
    step and the one of a test batch). Their ``predict`` also runs ``forward`` (a stage draw and a
    MixStyle whose output it discards), ours does not; the seed set before each test batch makes
    that irrelevant;
  * their code calls no ``.cuda()`` on the ITTA path; everything runs on the CPU.
Nothing else is patched. Checked along the way: their ``ResNet_ITTA.train`` re-freezes BatchNorm
(``freeze_bn``) whatever the mode, as ours keeps the model in eval mode; their ``predict`` applies no
MixStyle to the prediction (it computes and discards an augmented branch), as ours. With the PACS
ada_lr 1e-6 the test loss's gradients are ~1e-12, far below Adam's eps, so the mapping moves by
~1e-9 per batch on both sides; ``--ada-lr 0.1`` (their DomainNet value) makes it move.
Without ``--reference`` the script says how to get the code and exits 0.
"""
import argparse
import ast
import copy
import importlib
import os
import sys
import types
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._reference import authors_definitions, worst

NUM_CLASSES = 7                       # PACS
INPUT_SHAPE = (3, 224, 224)           # their MappingNetwork's shapes are ResNet-18's at 224 px
HINT = ("skipped: pass --reference <clone of https://github.com/liangchen527/ITTA> (or set CL_ITTA_REFERENCE) to "
        "compare our ITTA with the authors' code")


# ---------------------------------------------------------------------------- loading their code
class TorchDrawnRandom:
    """Stands in for Python's ``random`` module in their networks.py: ``random()`` is ``1 - torch.rand(())``,
    so that their ``random() > 0.5`` (MixStyle after stage 1) holds exactly when our ``torch.rand(()) < 0.5``."""

    @staticmethod
    def random():
        return 1.0 - float(torch.rand(()))


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _class_text(path, names, namespace):
    """Execute the classes ``names`` of ``path`` cut out of its text: from ``class NAME`` to the next line
    at column 0 (the file as a whole does not parse)."""
    lines = open(path).read().splitlines()
    found = {}
    for i, line in enumerate(lines):
        for name in names:
            if line.startswith(f"class {name}(") or line.startswith(f"class {name}:"):
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or lines[j][0] in " \t"):
                    j += 1
                found[name] = "\n".join(lines[i:j]) + "\n"
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path} has no class {', '.join(missing)}: is this liangchen527/ITTA?")
    source = "\n".join(found[n] for n in names)          # base classes first
    exec(compile(ast.parse(source, path), path, "exec"), namespace)
    return namespace


class Reference:
    """The authors' ITTA class, ``misc`` module and default hyper-parameters, loaded from a clone."""

    def __init__(self, folder):
        root = os.path.join(os.path.abspath(folder), "domainbed")
        files = ["algorithms.py", "networks.py", "hparams_registry.py", os.path.join("lib", "misc.py")]
        absent = [f for f in files if not os.path.isfile(os.path.join(root, f))]
        if absent:
            raise SystemExit(f"{folder} is not a clone of github.com/liangchen527/ITTA: no domainbed/"
                             f"{', domainbed/'.join(absent)} there. Pass the folder that holds domainbed/.")
        self.root = root
        self.base = None                                  # the network their resnet18(pretrained=True) copies
        _module("domainbed", __path__=[root])
        _module("domainbed.lib", __path__=[os.path.join(root, "lib")])
        self.misc = importlib.import_module("domainbed.lib.misc")
        self.hparams_registry = importlib.import_module("domainbed.hparams_registry")
        torchvision = types.SimpleNamespace(models=types.SimpleNamespace(resnet18=self._resnet18))
        ns = {"torch": torch, "nn": nn, "F": F, "copy": copy, "random": TorchDrawnRandom,
              "torchvision": torchvision, "__name__": "domainbed.networks"}
        authors_definitions(os.path.join(root, "networks.py"),
                            {"Identity", "MappingNetwork", "Adaparams", "ResNet_ITTA", "Classifier"}, ns,
                            hint=": is this liangchen527/ITTA?")
        self.networks = _module("domainbed.networks", **ns)
        ns = {"torch": torch, "nn": nn, "F": F, "OrderedDict": OrderedDict, "networks": self.networks,
              "l2_between_dicts": self.misc.l2_between_dicts, "__name__": "domainbed.algorithms"}
        self.ITTA = _class_text(os.path.join(root, "algorithms.py"), ["Algorithm", "ITTA"], ns)["ITTA"]

    def _resnet18(self, pretrained=False, **_kw):
        return copy.deepcopy(self.base)

    def hparams(self, batch_size, lr=None, ada_lr=None):
        hp = self.hparams_registry.default_hparams("ITTA", "PACS")
        hp["batch_size"] = batch_size
        if lr is not None:
            hp["lr"] = lr
        if ada_lr is not None:
            hp["ada_lr"] = ada_lr
        return hp

    def build(self, base, num_domains, hp):
        """Their ITTA on a copy of ``base`` (a torchvision ResNet-18 with its ``fc`` head)."""
        self.base = base
        algo = self.ITTA(INPUT_SHAPE, NUM_CLASSES, num_domains, hp)
        with torch.no_grad():
            algo.classifier.weight.copy_(base.fc.weight)
            algo.classifier.bias.copy_(base.fc.bias)
        return algo


# ---------------------------------------------------------------------------- network, data, ours
def make_network(dtype, seed=0):
    """torchvision ResNet-18 (random init from ``seed``, 7 classes), BN running statistics from one pass
    over 8 random 224 px images (cumulative average), in eval mode, converted to ``dtype``."""
    import torchvision
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(8, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)))
    for m in bns:
        m.momentum = 0.1
    return net.eval().to(dtype)


def make_data(args):
    """(source TensorData with domain ids g, test batches [B, 3, 224, 224]): uniform random images."""
    from cl.data import TensorData
    g = torch.Generator().manual_seed(1)
    n = 2 * args.per_domain                        # per domain: two batches' worth, read in random passes
    x = (torch.rand(args.domains * n, *INPUT_SHAPE, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, NUM_CLASSES, (args.domains * n,), generator=g)
    domains = torch.arange(args.domains).repeat_interleave(n)
    tests = torch.rand(args.batches * args.test_batch, *INPUT_SHAPE, generator=g).to(args.dtype)
    return TensorData(x, y, domains), list(tests.split(args.test_batch))


def make_ours(net, hp, args):
    """Our ITTA on ``net`` behind an identity ``InputNormalize`` (mean 0, std 1: (x - 0) / 1 is exact), which
    promotes the float32 source batches of ``TensorData`` to the network's dtype."""
    from cl.models import InputNormalize
    from cl.registry import STRATEGIES, load_builtins
    from cl.strategy import StreamInfo
    load_builtins()
    cfg = STRATEGIES.config_of("itta")(lr=hp["lr"], weight_decay=hp["weight_decay"], ada_lr=hp["ada_lr"],
                                       train_batch_size=args.per_domain, train_steps=args.steps,
                                       batch_size=args.test_batch)
    stream = StreamInfo(protocol="online", num_experiences=1, batch_size=args.test_batch, num_classes=NUM_CLASSES,
                        input_shape=INPUT_SHAPE, has_source=True)
    model = InputNormalize(net, [0.0] * 3, [1.0] * 3).to(args.dtype)
    return STRATEGIES.get("itta")(model, cfg, stream=stream, device="cpu")


# ---------------------------------------------------------------------------- the check
def snapshot(params):
    return [p.detach().clone() for p in params]


def test_phase(ours, theirs, ref, tests, args, start=0):
    """(our logits, their logits) per test batch: their misc.accuracy_tsc (per batch test_adapt, then predict)
    with their predict recorded, and our adapt; the torch seed set to the same value before each batch."""
    preds = []
    predict = type(theirs).predict.__get__(theirs)
    theirs.predict = lambda x: preds.append(predict(x)) or preds[-1]

    def loader():
        for k, x in enumerate(tests, start):
            torch.manual_seed(args.seed + 1 + k)
            yield x, torch.zeros(len(x), dtype=torch.long)
    ref.misc.accuracy_tsc(theirs, loader(), None, "cpu")
    out = []
    for k, x in enumerate(tests, start):
        torch.manual_seed(args.seed + 1 + k)
        out.append(ours.adapt(x))
    return out, preds          # ours returns float32 logits (Strategy.predict): theirs are rounded alike


def check(ref, args):
    """One side-by-side run in ``args.dtype``; prints and returns the largest differences and movements."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(args.dtype)     # their MappingNetwork/Adaparams and our blocks: torch.ones/zeros
    try:
        return _check(ref, args)
    finally:
        torch.set_default_dtype(previous)


def _check(ref, args):
    base = make_network(args.dtype)
    source, tests = make_data(args)
    hp = ref.hparams(args.per_domain, args.lr, args.ada_lr)

    theirs = ref.build(copy.deepcopy(base), args.domains, hp)       # before ours hooks into its own copy
    ours = make_ours(copy.deepcopy(base), hp, args)
    init = {"weights": snapshot(base.parameters()), "adaparams": snapshot(theirs.adaparams.parameters()),
            "mapping": snapshot(theirs.test_mapping.parameters())}

    # training: ours' warm_up reads its source batches; theirs gets the same batches, split per domain
    torch.manual_seed(args.seed)
    ours.setup(source=source)
    batches = ours.source_batches(source)                # a fresh generator: the same sequence warm_up read
    their_log = []
    torch.manual_seed(args.seed)
    theirs.train()
    for _ in range(args.steps):
        x, y = next(batches)
        x = x.to(args.dtype)
        their_log.append(theirs.update(list(zip(x.split(args.per_domain), y.split(args.per_domain)))))

    def their_weights():
        return list(theirs.featurizer.network.parameters()) + list(theirs.classifier.parameters())
    diffs = {"weights": worst(list(ours.model.parameters()), their_weights()),
             "adaparams": worst(list(ours.adaparams.parameters()), list(theirs.adaparams.parameters()))}

    # test: their accuracy_tsc (test_adapt, then predict) against our adapt, the seed set before each batch
    out, preds = test_phase(ours, theirs, ref, tests, args)
    diffs = {"predictions": worst(out, [p.float() for p in preds]), **diffs,
             "weights after test": worst(list(ours.model.parameters()), their_weights()),
             "mapping": worst(list(ours.mapping.parameters()), list(theirs.test_mapping.parameters()))}
    moved = {"weights": worst(list(ours.model.parameters()), init["weights"]),
             "adaparams": worst(list(ours.adaparams.parameters()), init["adaparams"]),
             "mapping": worst(list(ours.mapping.parameters()), init["mapping"])}
    # the test phase alone: ours back to its trained state (reset: the snapshot taken after warm_up), a fresh
    # copy of theirs given our trained weights and adaparams
    ours.reset()
    theirs = ref.build(copy.deepcopy(base), args.domains, hp)
    with torch.no_grad():
        for u, v in zip(their_weights() + list(theirs.adaparams.parameters()),
                        list(ours.model.parameters()) + list(ours.adaparams.parameters())):
            u.copy_(v)
    out2, preds2 = test_phase(ours, theirs, ref, tests[:1], args)
    diffs["mapping, 1st batch (same trained state)"] = worst(list(ours.mapping.parameters()),
                                                             list(theirs.test_mapping.parameters()))
    first_moved = worst(list(ours.mapping.parameters()), init["mapping"])
    more = test_phase(ours, theirs, ref, tests[1:], args, start=1) if len(tests) > 1 else ([], [])
    diffs["predictions (same trained state)"] = worst(out2 + more[0], [p.float() for p in preds2 + more[1]])
    diffs["mapping (same trained state)"] = worst(list(ours.mapping.parameters()),
                                                  list(theirs.test_mapping.parameters()))
    moved["mapping (same trained state)"] = worst(list(ours.mapping.parameters()), init["mapping"])
    moved["mapping, 1st batch (same trained state)"] = first_moved
    agree = sum(int((p.argmax(1) == q.argmax(1)).sum()) for p, q in zip(out, preds))
    cla_diff = max((abs(o["cla"] - their_log[o["step"]]["loss"]) for o in ours.train_log), default=0.0)
    print(f"ITTA in {str(args.dtype).replace('torch.', '')}: ours (strategies/itta.py) vs the authors' ITTA "
          f"(liangchen527/ITTA), torchvision ResNet-18 random init, {NUM_CLASSES} classes, 224 px random images; "
          f"lr {hp['lr']:g}, ada_lr {hp['ada_lr']:g}, weight decay {hp['weight_decay']:g}; {args.steps} training "
          f"steps on {args.domains} domains x {args.per_domain} images, {len(tests)} test batches of "
          f"{args.test_batch}: largest |difference|")
    for k, v in diffs.items():
        extra = f"   (moved from init by up to {moved[k]:.3e})" if k in moved else ""
        print(f"  {k:<40s} {v:.3e}{extra}")
    print(f"  training loss (cla) largest |difference| {cla_diff:.3e} over the {len(ours.train_log)} steps ours "
          f"logs; same argmax {agree}/{sum(len(x) for x in tests)}", flush=True)
    return {"diffs": diffs, "moved": moved}


DTYPES = {"float32": [torch.float32], "float64": [torch.float64], "both": [torch.float64, torch.float32]}
FLOAT64_TOLERANCE = 1e-9     # float64 rounding amplified by Adam's first steps stays far below this
EXACT = ("predictions", "weights", "adaparams", "weights after test", "mapping, 1st batch (same trained state)",
         "predictions (same trained state)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=os.environ.get("CL_ITTA_REFERENCE"),
                   help="a clone of github.com/liangchen527/ITTA (the folder holding domainbed/; "
                        "or $CL_ITTA_REFERENCE)")
    p.add_argument("--check", action="store_true", help="print the largest differences (the only mode)")
    p.add_argument("--quick", action="store_true",
                   help="float64 only, 1 step on 2 domains x 2 images, 1 test batch of 2 (the suite)")
    p.add_argument("--dtype", choices=list(DTYPES), default="both",
                   help="float64 shows whether the two compute the same thing (rounding is 1e-16); float32 is "
                        "what runs (default: both)")
    p.add_argument("--steps", type=int, default=3, help="training steps (update calls)")
    p.add_argument("--domains", type=int, default=3, help="source domains per step")
    p.add_argument("--per-domain", type=int, default=4, help="images per domain per step (their batch_size)")
    p.add_argument("--batches", type=int, default=3, help="test batches")
    p.add_argument("--test-batch", type=int, default=4, help="images per test batch")
    p.add_argument("--lr", type=float, default=None, help="both sides' lr (default: their PACS default, 5e-5)")
    p.add_argument("--ada-lr", type=float, default=None, help="both sides' ada_lr (default: their PACS default, 1e-6)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.dtype, args.steps, args.domains, args.per_domain, args.batches, args.test_batch = "float64", 1, 2, 2, 1, 2
    if not args.reference:
        print(HINT)
        return None
    for name in ("steps", "domains", "per_domain", "batches", "test_batch", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    torch.set_num_threads(args.threads)
    ref = Reference(args.reference)
    results = {}
    for dtype in DTYPES[args.dtype]:
        results[str(dtype)] = check(ref, argparse.Namespace(**{**vars(args), "dtype": dtype}))
    f64 = results.get(str(torch.float64))
    if f64 is not None:
        off = {k: v for k, v in f64["diffs"].items() if v > FLOAT64_TOLERANCE and k in EXACT}
        if off:
            raise SystemExit(f"float64: ours and the authors' ITTA differ beyond {FLOAT64_TOLERANCE:g} in "
                             f"{', '.join(off)}: the two no longer compute the same thing.")
        print(f"float64: predictions, weights, adaparams and the mapping after one test batch agree within "
              f"{FLOAT64_TOLERANCE:g}: the two compute the same thing (later mapping differences: ReLU kinks, "
              "see the docstring)")
    return results


if __name__ == "__main__":
    main()
