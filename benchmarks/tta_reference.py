"""Our test-time adaptation methods against the RMT authors' implementations, side by side.

The authors' benchmark is not part of this repository: clone it yourself and point ``--reference``
at its ``classification`` folder (the one holding ``conf.py``, ``methods/`` and ``cfgs/``):

    git clone https://github.com/mariodoebler/test-time-adaptation && \\
    python -m benchmarks.tta_reference --method eata --reference test-time-adaptation/classification --check

``--check`` runs theirs and ours on the same model (the CIFAR ResNet-20; the ../shared weights when
present, else a seeded random init), the same batches and the same torch seed before each, and
prints the largest |difference| of the predictions and of the adapted weights after
``--batches`` batches; ``--check --float64`` does the same with the model and batches in float64 on both
sides, which separates a real difference from float32 rounding that adaptation amplifies (``cotta_cl``:
ours with ``model.channels_last=true``, whose convolutions sum in another order). Without ``--check`` it prints the seconds per batch of both (alternating
batch by batch, median). Both sides use their CIFAR-10-C defaults: theirs ``conf.py`` merged with
``cfgs/cifar10_c/<method>.yaml``, ours the strategy's config defaults; only the batch size and the
number of source samples are set to the same values on both. Views the authors draw in their data
loader (AdaContrast, TTAug, MEMO) are drawn beforehand and handed to both sides in the timing too,
so the seconds compare the methods, not the view generation (ours draws them inside the method).

Data: the test batches are CIFAR-10 (JPEG copy, ../shared/data/cifar10-jpeg) test images with
Gaussian noise at severity 5 (``scenarios.corruptions``), the source data its training images;
without that folder, uniform random images with random labels (a stand-in: the figures then only
show that the two computations agree). Source batches are handed to the authors' code in the
order ours reads them, so that methods with source data (EATA, SANTA, GTTA) can be compared.

How the authors' code is loaded, without changing what it computes:
  * it is imported file by file (not through ``methods/__init__.py``, which pulls in CLIP);
  * ``models.model`` is replaced by a module giving ``split_up_model`` for our models (the encoder
    returns the input of the classifier head) and the authors' own ``BaseModel`` class, read from
    their ``models/model.py``; ``datasets.data_loading.get_source_loader`` returns our source
    batches; ``yacs``/``iopath`` are replaced by a dictionary-backed config when not installed;
  * ``Tensor.cuda`` is the identity when there is no GPU (CMF calls ``.cuda()``);
  * their RoTTA calls ``loss_calculation(x)`` on the CPU path although it takes no argument (a
    TypeError); the call is forwarded without the argument.
Without ``--reference`` the script says how to get the code and exits 0.
"""
import argparse
import ast
import contextlib
import copy
import importlib
import io
import os
import sys
import tempfile
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import yaml
from torch import nn

from cl.config import build_config
from cl.data import TensorData
from cl.models import build_model
from cl.models.features import classifier_head, features_and_logits
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from benchmarks._reference import alternate, authors_definitions, worst

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CL_SHARED", os.path.join(REPO, "..", "shared"))
WEIGHTS = os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th")
CIFAR = os.path.join(SHARED, "data", "cifar10-jpeg")
NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


# ---------------------------------------------------------------------------- the methods
@dataclass
class Spec:
    """One method: the authors' module/class/config file, our strategy name and overrides.

    ``source``: a function (ours, source data) -> the passes over the source, each a list of batches [(x, y)],
    in the order ours read them (None: no source data). ``weights``: (ours, theirs) -> {label: (our tensors, their tensors)}.
    ``views``: (x, generator) -> the augmented views the authors' data loader would add to x; they
    are drawn once per batch and handed to both (ours through its ``views`` method).
    """
    module: str
    cls: str
    cfg: str
    ours: str
    overrides: Dict = field(default_factory=dict)
    ref_overrides: Dict = field(default_factory=dict)
    source: Optional[Callable] = None
    weights: Optional[Callable] = None
    views: Optional[Callable] = None
    stack_views: bool = False       # ours.views returns the views stacked [V, B, ...] (AugMix methods)
    single_images: bool = False     # the authors' code works on one image per call (batch size 1)
    channels_last: bool = False     # our model in channels_last memory format (``model.channels_last=true``)


def augmix_32(x, generator):
    """32 AugMix views, drawn once and given to both implementations."""
    from strategies._tta_views import augmix_views
    return list(augmix_views(x, 32, generator=generator))


def adacontrast_views(x, generator):
    """The (weak, strong, strong) views, drawn once and given to both implementations."""
    from strategies._tta_views import moco_strong, moco_weak
    return [moco_weak(x, generator), moco_strong(x, generator), moco_strong(x, generator)]


def model_weights(ours, theirs):
    """The adapted model's parameters, in module order."""
    return {"weights": (list(ours.model.parameters()), list(theirs.model.parameters()))}


def bn_buffers(ours, theirs):
    """The parameters and the BatchNorm running statistics (BN-EMA adapts the latter)."""
    def running(model):
        return [b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    return {**model_weights(ours, theirs), "running stats": (running(ours.model), running(theirs.model))}


def teacher_weights(attr):
    """Student and teacher parameters and buffers; ``attr``: the authors' name of the teacher."""
    def pairs(ours, theirs):
        t_ours, t_theirs = ours.teacher, getattr(theirs, attr)
        return {**model_weights(ours, theirs), "teacher": (list(t_ours.parameters()), list(t_theirs.parameters())),
                "buffers": ([b for b in list(ours.model.buffers()) + list(t_ours.buffers()) if b.is_floating_point()],
                            [b for b in list(theirs.model.buffers()) + list(t_theirs.buffers())
                             if b.is_floating_point() and b.dim() > 0 and "target_" not in _buffer_name(theirs, b)])}
    return pairs


def adacontrast_weights(ours, theirs):
    def floats(m):
        return [b for b in m.buffers() if b.is_floating_point()]
    return {"weights": (list(ours.model.parameters()), list(theirs.base_model.parameters())),
            "key encoder": (list(ours.teacher.parameters()), list(theirs.momentum_model.parameters())),
            "BN running": (floats(ours.model) + floats(ours.teacher),
                           floats(theirs.base_model) + floats(theirs.momentum_model)),
            "queue": ([ours.queue["feats"], ours.queue["labels"]], [theirs.model.mem_feat, theirs.model.mem_labels]),
            "bank": ([ours.bank["feats"], ours.bank["probs"]], [theirs.banks["features"], theirs.banks["probs"]])}


def _buffer_name(theirs, buf):
    """Name of ``buf`` in the authors' models (RoTTA registers unused target_mean/target_var buffers)."""
    for model in (theirs.model, getattr(theirs, "model_ema", theirs.model)):
        for n, b in model.named_buffers():
            if b is buf:
                return n
    return ""


def eata_source(ours, source):
    from strategies.eata import FISHER_SEED
    from strategies.tta_base import source_subset
    data = source_subset(source, ours.cfg.fisher_samples, FISHER_SEED)
    return [[(b.x, b.y) for b in data.batches(ours.cfg.batch_size)]]       # one pass


def santa_source(ours, source):
    from strategies.santa import SOURCE_SEED
    from strategies.tta_base import source_subset
    data = source_subset(source, -1, SOURCE_SEED)
    return [[(b.x, b.y) for b in data.batches(ours.cfg.batch_size)]]


def gtta_source(ours, source, test_batches=64):
    """Enough passes of our source stream for ``test_batches`` test batches (one source batch each)."""
    from strategies.tta_base import SourceStream
    stream = SourceStream(source, ours.cfg.batch_size, ours.source.seed)
    n = source.num_batches(ours.cfg.batch_size)
    passes = test_batches // n + 2
    return [[(b.x, b.y) for b in (stream.next() for _ in range(n))] for _ in range(passes)]


def rmt_source(ours, source, test_batches=64):
    """The authors' RMT opens its replay iterator (pass 0), then reads one pass for the prototypes,
    then re-opens the iterator whenever it runs out: ours' replay passes with the prototype pass second
    (enough for the warm-up and ``test_batches`` replay batches)."""
    from strategies.rmt import SOURCE_SEED
    src, bs = source, ours.cfg.batch_size
    replay_passes = (ours.cfg.warmup_samples // bs + test_batches) // src.num_batches(bs) + 2

    def pass_(seed):
        order = torch.randperm(len(src), generator=torch.Generator().manual_seed(seed))
        return [(b.x, b.y) for b in src.subset(order).batches(bs)]
    replay = [pass_(SOURCE_SEED + k) for k in range(replay_passes)]
    return [replay[0], pass_(SOURCE_SEED - 1)] + replay[1:]


def rmt_weights(ours, theirs):
    return {**teacher_weights("model_ema")(ours, theirs),
            "projector": (list(ours.projector.parameters()), list(theirs.projector.parameters())),
            "prototypes": ([ours.prototypes], [theirs.prototypes_src.squeeze(1)])}


def santa_weights(ours, theirs):
    return {**model_weights(ours, theirs),
            "projector": (list(ours.projector.parameters()), list(theirs.projector.parameters())),
            "prototypes": ([ours.prototypes], [theirs.prototypes_src.squeeze(1)])}


SPECS = {
    "tent": Spec("tent", "Tent", "tent", "tent"),
    "cotta": Spec("cotta", "CoTTA", "cotta", "cotta", weights=teacher_weights("model_ema")),
    "cotta_views": Spec("cotta", "CoTTA", "cotta", "cotta", {"ap": 1.0}, {"COTTA": {"AP": 1.0}},
                        weights=teacher_weights("model_ema")),      # the 32 augmented views on every batch
    # ours with model.channels_last=true (the authors' model stays NCHW): oneDNN's NHWC convolutions,
    # the same arithmetic in another summation order (--check --float64 shows it), faster on the CPU
    "cotta_cl": Spec("cotta", "CoTTA", "cotta", "cotta", weights=teacher_weights("model_ema"), channels_last=True),
    "cotta_views_cl": Spec("cotta", "CoTTA", "cotta", "cotta", {"ap": 1.0}, {"COTTA": {"AP": 1.0}},
                           weights=teacher_weights("model_ema"), channels_last=True),
    "rmt": Spec("rmt", "RMT", "rmt", "rmt", {"warmup_samples": 256}, {"RMT": {"NUM_SAMPLES_WARM_UP": 256}},
                source=rmt_source, weights=rmt_weights),
    "bn": Spec("norm", "BNTest", "norm_test", "bn"),
    "bn_alpha": Spec("norm", "BNAlpha", "norm_alpha", "bn", {"stats": "alpha"}),
    "bn_ema": Spec("norm", "BNEMA", "norm_ema", "bn", {"stats": "ema"}, weights=bn_buffers),
    "eata": Spec("eata", "EATA", "eata", "eata", source=eata_source),
    "eta": Spec("eata", "EATA", "eta", "eata", {"fisher_alpha": 0.0}),
    "sar": Spec("sar", "SAR", "sar", "sar"),
    "sar_recovery": Spec("sar", "SAR", "sar", "sar", {"reset_constant_em": 0.278},
                         {"SAR": {"RESET_CONSTANT_EM": 0.278}}),   # recovers on some batches
    "rpl": Spec("rpl", "RPL", "rpl", "rpl"),
    "deyo": Spec("deyo", "DeYO", "deyo", "deyo"),
    "deyo_pixel": Spec("deyo", "DeYO", "deyo", "deyo", {"aug_type": "pixel"}, {"DEYO": {"AUG_TYPE": "pixel"}}),
    "deyo_occ": Spec("deyo", "DeYO", "deyo", "deyo", {"aug_type": "occ", "occlusion_size": 16, "row_start": 8,
                                                       "column_start": 8},
                     {"DEYO": {"AUG_TYPE": "occ", "OCCLUSION_SIZE": 16, "ROW_START": 8, "COLUMN_START": 8}}),
    "roid": Spec("roid", "ROID", "roid", "roid"),
    "cmf": Spec("cmf", "CMF", "cmf", "cmf"),
    "lame": Spec("lame", "LAME", "lame", "lame"),
    "santa": Spec("santa", "SANTA", "santa", "santa", source=santa_source, weights=santa_weights),
    "gtta": Spec("gtta", "GTTA", "gtta", "gtta", source=gtta_source),
    "adacontrast": Spec("adacontrast", "AdaContrast", "adacontrast", "adacontrast",
                        weights=adacontrast_weights, views=adacontrast_views),
    "ttaug": Spec("ttaug", "TTAug", "source", "ttaug", views=augmix_32, stack_views=True, single_images=True),
    "memo": Spec("memo", "MEMO", "memo", "memo", views=augmix_32, stack_views=True, single_images=True),
    "memo_online": Spec("memo", "MEMO", "memo", "memo", {"episodic": False}, {"MODEL": {"EPISODIC": False}},
                        views=augmix_32, stack_views=True, single_images=True),
    "rotta": Spec("rotta", "RoTTA", "rotta", "rotta", weights=teacher_weights("model_ema")),
    "lame_knn": Spec("lame", "LAME", "lame", "lame", {"affinity": "kNN", "force_symmetry": True},
                     {"LAME": {"AFFINITY": "kNN", "FORCE_SYMMETRY": True}}),
    "lame_linear": Spec("lame", "LAME", "lame", "lame", {"affinity": "linear"}, {"LAME": {"AFFINITY": "linear"}}),
}


# ---------------------------------------------------------------------------- GTTA's style-transfer variant
# Both sides load the same random-init VGG (the authors' full vggnet layout) and decoder, written to
# ADAIN_DIR/<kind>/adain/ as their code expects (vgg_normalized.pth, decoder_cifar10_c.pth). The files
# are written when ours() reads the spec's overrides, i.e. before either side is built. "gtta_style"
# gives both the decoder; "gtta_style_pretrain" gives none, so both pre-train one on the source
# (from the same initial weights; the same source batches; the random style draws from torch's
# global generator, seeded alike). To run their code unchanged on a machine without a GPU, their
# models/style_transfer.py sees a torch whose load/tensor map "cuda" to the CPU, and nn.Module.cuda
# is the identity; their methods/gtta.py reads an undefined global ``dataset_name`` when
# USE_STYLE_TRANSFER is on (a NameError in their code), which is set to "cifar10_c".
ADAIN_DIR = os.path.join(tempfile.gettempdir(), f"tta_reference_adain_{os.getpid()}")
ADAIN_WEIGHTS_SEED = 11
ADAIN_PRETRAIN_STEPS = 10
_adain_initial_decoder = {}


class _TorchOnCPU(types.ModuleType):
    """``torch`` for the authors' style_transfer.py on a machine without CUDA."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, **kw):
        kw.pop("weights_only", None)       # never run code from a file
        return torch.load(f, map_location="cpu" if map_location == "cuda" else map_location, weights_only=True, **kw)

    @staticmethod
    def tensor(data, device=None, **kw):
        return torch.tensor(data, device="cpu" if device == "cuda" else device, **kw)


def _their_style_module():
    if "models.style_transfer" not in sys.modules:     # (the "gtta" spec may have imported it already)
        with torch.random.fork_rng(devices=[]):          # their file builds its networks at import
            importlib.import_module("models.style_transfer")
    st = sys.modules["models.style_transfer"]
    if not torch.cuda.is_available() and not isinstance(st.torch, _TorchOnCPU):
        st.torch = _TorchOnCPU("torch")
        nn.Module.cuda = lambda self, *a, **k: self
    importlib.import_module("methods.gtta").dataset_name = "cifar10_c"
    return st


def _write_adain_files(kind):
    """Random-init VGG (and, for "given", decoder) in ADAIN_DIR/<kind>/adain; for "pretrain" the
    initial decoder ours will build (same global generator state) is kept for theirs."""
    import atexit
    import shutil
    from strategies._adain import StyleTransfer
    st = _their_style_module()
    if not os.path.isdir(ADAIN_DIR):
        atexit.register(shutil.rmtree, ADAIN_DIR, True)
    shutil.rmtree(os.path.join(ADAIN_DIR, kind), ignore_errors=True)
    folder = os.path.join(ADAIN_DIR, kind, "adain")
    os.makedirs(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ADAIN_WEIGHTS_SEED)
        vgg, dec = copy.deepcopy(st.vggnet), copy.deepcopy(st.decoder)
        for m in list(vgg) + list(dec):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    torch.save(vgg.state_dict(), os.path.join(folder, "vgg_normalized.pth"))
    if kind == "given":
        torch.save({"decoder": dec.state_dict()}, os.path.join(folder, "decoder_cifar10_c.pth"))
    else:
        with torch.random.fork_rng(devices=[]):          # as strategies._adain.build_style_transfer
            _adain_initial_decoder.update(copy.deepcopy(StyleTransfer().decoder.state_dict()))


class AdainOverrides(Mapping):
    """Our overrides of a style-transfer spec; ``**`` (ours() reads them so) writes the files first."""

    def __init__(self, kind):
        self.kind = kind
        folder = os.path.join(ADAIN_DIR, kind)
        self.values = {"style_transfer": True, "vgg_checkpoint": os.path.join(folder, "adain", "vgg_normalized.pth"),
                       "decoder_checkpoint": os.path.join(folder, "adain", "decoder_cifar10_c.pth") if kind == "given"
                       else os.path.join(folder, "ours_decoder.pth")}
        if kind == "pretrain":
            self.values["pretrain_steps_adain"] = ADAIN_PRETRAIN_STEPS

    def keys(self):
        _write_adain_files(self.kind)
        return self.values.keys()

    def __getitem__(self, key):
        return self.values[key]

    def __iter__(self):
        return iter(self.values)

    def __len__(self):
        return len(self.values)


def gtta_style_source(kind):
    """The authors' GTTA opens its source iterator (our stream's pass 0), then TransferNet opens its
    own (our pre-training stream's pass 0; unused when the decoder is given); pre-training reads one
    pass for the style pool, then re-opens TransferNet's iterator whenever it runs out; then GTTA's
    iterator goes on (our stream's passes 1, 2, ...)."""
    def passes(ours, source):
        from strategies.gtta import PRETRAIN_SEED, STYLE_POOL_SEED
        from strategies.tta_base import SourceStream, source_subset
        main, bs = gtta_source(ours, source), ours.cfg.batch_size
        n = source.num_batches(bs)
        pre = SourceStream(source, bs, PRETRAIN_SEED)
        if kind == "given":
            return [main[0], [(b.x, b.y) for b in (pre.next() for _ in range(n))]] + main[1:]
        _their_style_module().decoder.load_state_dict(_adain_initial_decoder)
        pool = [(b.x, b.y) for b in source_subset(source, -1, STYLE_POOL_SEED).batches(bs)]
        n_passes = -(-ADAIN_PRETRAIN_STEPS // n)
        pre_passes = [[(b.x, b.y) for b in (pre.next() for _ in range(n))] for _ in range(n_passes)]
        return [main[0], pre_passes[0], pool] + pre_passes[1:] + main[1:]
    return passes


def gtta_style_weights(ours, theirs):
    out = {**model_weights(ours, theirs),
           "decoder": (list(ours.style.decoder.parameters()), list(theirs.adain_model.decoder.parameters())),
           "encoder": (list(ours.style.encoder.parameters()), list(theirs.adain_model.encoder.parameters())),
           "style buffer": ([t for layer in ours.styles.layers for t in layer],
                            [t for layer in theirs.moments_list for t in layer])}
    mine = ours.cfg.decoder_checkpoint
    their = os.path.join(os.path.dirname(mine), "adain", "decoder_cifar10_c.pth")
    if os.path.basename(mine) == "ours_decoder.pth":     # both pre-trained and saved a decoder
        if os.path.isfile(mine) and os.path.isfile(their):
            out["pre-trained"] = (list(torch.load(mine, weights_only=True)["decoder"].values()),
                                  list(torch.load(their, weights_only=True)["decoder"].values()))
    return out


SPECS.update({
    "gtta_style": Spec("gtta", "GTTA", "gtta", "gtta", AdainOverrides("given"),
                       {"CKPT_DIR": os.path.join(ADAIN_DIR, "given"), "GTTA": {"USE_STYLE_TRANSFER": True}},
                       source=gtta_style_source("given"), weights=gtta_style_weights),
    "gtta_style_pretrain": Spec("gtta", "GTTA", "gtta", "gtta", AdainOverrides("pretrain"),
                                {"CKPT_DIR": os.path.join(ADAIN_DIR, "pretrain"),
                                 "GTTA": {"USE_STYLE_TRANSFER": True, "PRETRAIN_STEPS_ADAIN": ADAIN_PRETRAIN_STEPS}},
                                source=gtta_style_source("pretrain"), weights=gtta_style_weights),
})


# ---------------------------------------------------------------------------- loading their code
class CfgNode(dict):
    """A dictionary with attribute access: enough of yacs' CfgNode for the authors' conf.py."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def clone(self):
        return copy.deepcopy(self)

    def freeze(self):
        return None


def merge(node, updates):
    """Recursively set ``updates`` (a plain dict, e.g. a loaded YAML file) into a CfgNode; strings
    are read as Python literals where they are one, as yacs does (YAML reads ``1e-3`` as a string)."""
    for k, v in updates.items():
        if isinstance(v, dict):
            merge(node[k], v)
            continue
        if isinstance(v, str):
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
        node[k] = v


class Headless(nn.Module):
    """The encoder of a model: returns the input of its classifier head (computing the head too)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return features_and_logits(self.model, x)[0]


def split_up_model(model, arch_name=None, dataset_name=None):
    return Headless(model), classifier_head(model)


class SourceLoader:
    """Stands in for the authors' source DataLoader: each pass yields the next list of batches."""
    passes = []

    def __init__(self, batch_size=None):
        self.k = 0
        self.batch_size = batch_size        # RMT names its warm-up checkpoint after it

    def __iter__(self):
        if self.k >= len(SourceLoader.passes):
            raise SystemExit(f"the authors' code opened source pass {self.k + 1} but only {len(SourceLoader.passes)} "
                             "were prepared; give the method's source function more passes")
        batches = SourceLoader.passes[self.k]
        self.k += 1
        return iter([[x, y] for x, y in batches])

    def __len__(self):
        return len(SourceLoader.passes[0])


def get_source_loader(batch_size=None, **_kw):
    return None, SourceLoader(batch_size)


def load_reference(folder):
    """Import the authors' conf.py and make their method files importable; returns their config."""
    folder = os.path.abspath(folder)
    if not os.path.isfile(os.path.join(folder, "methods", "base.py")) or not os.path.isfile(os.path.join(folder, "conf.py")):
        raise SystemExit(f"no methods/base.py and conf.py in {folder}: pass the 'classification' folder of a clone "
                         "of https://github.com/mariodoebler/test-time-adaptation")

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    module("yacs")
    module("yacs.config", CfgNode=CfgNode)
    module("iopath")
    module("iopath.common")
    module("iopath.common.file_io", g_pathmgr=types.SimpleNamespace(open=open, mkdirs=lambda p: os.makedirs(p, exist_ok=True)))
    for pkg in ("methods", "models", "datasets", "utils", "augmentations"):
        module(pkg, __path__=[os.path.join(folder, pkg)])
    ns = {"torch": torch, "nn": nn, "split_up_model": split_up_model}
    authors_definitions(os.path.join(folder, "models", "model.py"), {"BaseModel"}, ns)
    module("models.model", split_up_model=split_up_model, BaseModel=ns["BaseModel"],
           ResNetDomainNet126=type("ResNetDomainNet126", (nn.Module,), {}))
    module("datasets.data_loading", get_source_loader=get_source_loader)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, folder)
    conf = importlib.import_module("conf")
    return folder, conf.cfg


def their_cfg(defaults, folder, spec, batch, source_samples, ckpt_dir):
    cfg = copy.deepcopy(defaults)
    with open(os.path.join(folder, "cfgs", "cifar10_c", f"{spec.cfg}.yaml")) as f:
        merge(cfg, yaml.safe_load(f))
    merge(cfg, {"TEST": {"BATCH_SIZE": batch}, "SOURCE": {"NUM_SAMPLES": source_samples, "NUM_WORKERS": 0},
                "CKPT_DIR": ckpt_dir, "DATA_DIR": ckpt_dir})
    merge(cfg, spec.ref_overrides)
    return cfg


def theirs(folder, defaults, spec, model, args, ckpt_dir):
    mod = importlib.import_module(f"methods.{spec.module}")
    if spec.module == "rotta":
        mod.RoTTA.loss_calculation = _without_argument(mod.RoTTA.loss_calculation)
    model.model_preprocess = None
    cfg = their_cfg(defaults, folder, spec, args.batch, args.source_samples, ckpt_dir)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):   # their logs, tqdm
        return getattr(mod, spec.cls)(cfg, model, 10)


def _without_argument(fn):
    if getattr(fn, "_shimmed", False):
        return fn

    def call(self, *_args):
        return fn(self)
    call._shimmed = True
    return call


# ---------------------------------------------------------------------------- ours, model, data
def make_model():
    cfg = build_config({"scenario": {"name": "synthetic_shift"}, "strategy": {"name": "source"},
                        "model": {"name": "cifar_resnet20", "normalize": NORMALIZE,
                                  "checkpoint": WEIGHTS if os.path.isfile(WEIGHTS) else None}})
    torch.manual_seed(0)
    return build_model(cfg.model, 10, (3, 32, 32))


def ours(spec, model, args, source):
    cfg = STRATEGIES.config_of(spec.ours)(batch_size=args.batch, **spec.overrides)
    if hasattr(cfg, "fisher_samples"):
        cfg.fisher_samples = args.source_samples
    stream = StreamInfo(protocol="online", num_experiences=1, batch_size=args.batch, num_classes=10,
                        input_shape=(3, 32, 32), has_source=source is not None)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    s = STRATEGIES.get(spec.ours)(model, cfg, stream=stream, device="cpu")
    s.setup(source=source)
    return s


def load_data(args):
    """(test batches [float B,3,32,32], source TensorData, description)."""
    g = torch.Generator().manual_seed(0)
    n_test = args.batch * (args.batches + 1)
    if os.path.isdir(os.path.join(CIFAR, "test")):
        from scenarios.corruptions import corrupt
        from scenarios.image_files import decode_images, folder_samples
        paths, labels, classes = folder_samples(os.path.join(CIFAR, "test"))
        pick = torch.randperm(len(paths), generator=g)[:n_test].tolist()
        x = corrupt(decode_images([paths[i] for i in pick]), "gaussian_noise", 5, seed=0).float() / 255
        paths, labels, _ = folder_samples(os.path.join(CIFAR, "train"), classes)
        pick = torch.randperm(len(paths), generator=g)[:args.source_samples].tolist()
        source = TensorData(decode_images([paths[i] for i in pick]), torch.tensor([labels[i] for i in pick]))
        what = "CIFAR-10 (JPEG copy) test images, gaussian_noise 5"
    else:
        x = torch.rand(n_test, 3, 32, 32, generator=g)
        source = TensorData((torch.rand(args.source_samples, 3, 32, 32, generator=g) * 255).to(torch.uint8),
                            torch.randint(0, 10, (args.source_samples,), generator=g))
        what = "random images (stand-in: no ../shared/data/cifar10-jpeg)"
    return list(x.split(args.batch)), source, what


# ---------------------------------------------------------------------------- check and timing
def their_inputs(spec, xs):
    """What the authors' method is called with per batch: x, or [x, *views] (views drawn from a fixed seed)."""
    if spec.views is None:
        return list(xs)
    g = torch.Generator().manual_seed(123)
    return [[x] + spec.views(x, g) for x in xs]


def check(name, ref, model, xs, source, args):
    spec = SPECS[name]
    folder, defaults = ref
    if spec.single_images:
        xs, args = list(xs[0][:len(xs)].split(1)), argparse.Namespace(**{**vars(args), "batch": 1})
    with tempfile.TemporaryDirectory() as ckpt_dir:
        torch.manual_seed(args.seed)
        a = ours(spec, copy.deepcopy(model), args, source)
        SourceLoader.passes = spec.source(a, source) if spec.source else [[]]
        inputs = their_inputs(spec, xs)
        if spec.views:
            queue = [torch.stack(v[1:]) if spec.stack_views else v[1:] for v in inputs]
            a.views = lambda x: queue.pop(0)
        out_a = [a.adapt(x) for x in xs]
        torch.manual_seed(args.seed)
        b = theirs(folder, defaults, spec, copy.deepcopy(model), args, ckpt_dir)
        out_b = [b(v) for v in inputs]
    moved = worst(list(a.model.parameters()), list(model.parameters()))
    diffs = {"predictions": worst(out_a, out_b)}
    for label, (u, v) in (spec.weights or model_weights)(a, b).items():
        diffs[label] = worst(u, v)
    agree = sum(int((p.argmax(1) == q.argmax(1)).sum()) for p, q in zip(out_a, out_b))
    print(f"{name}: ours ({spec.ours}{''.join(f' {k}={v}' for k, v in spec.overrides.items())}) vs the authors' "
          f"{spec.cls} (cfgs/cifar10_c/{spec.cfg}.yaml), {len(xs)} batches of {len(xs[0])}: largest |difference|")
    for k, v in diffs.items():
        print(f"  {k:<12s} {v:.3e}")
    print(f"  same argmax  {agree}/{sum(len(x) for x in xs)}; our weights moved by up to {moved:.3e} from the "
          f"source; our updates {a.updates}{'; ' + str(a.results()) if a.results() else ''}")
    return diffs


def timing(name, ref, model, xs, source, args):
    spec = SPECS[name]
    folder, defaults = ref
    if spec.single_images:
        xs, args = list(xs[0][:len(xs)].split(1)), argparse.Namespace(**{**vars(args), "batch": 1})
    with tempfile.TemporaryDirectory() as ckpt_dir:
        a = ours(spec, copy.deepcopy(model), args, source)
        SourceLoader.passes = spec.source(a, source) if spec.source else [[]]
        b = theirs(folder, defaults, spec, copy.deepcopy(model), args, ckpt_dir)
        inputs = their_inputs(spec, xs)
        if spec.views:      # the authors' views come from their data loader: both get the same, untimed
            queue = [torch.stack(v[1:]) if spec.stack_views else v[1:] for v in inputs]
            a.views = lambda x: queue.pop(0)
        a.adapt(xs[0])
        b(inputs[0])
        o, r, k = alternate(((lambda x=x: a.adapt(x)), (lambda v=v: b(v))) for x, v in zip(xs[1:], inputs[1:]))
    print(f"{name}: batch {args.batch}, {args.threads} threads, CPU, median of {k} alternating batches: "
          f"ours {o:.4f} s/batch, authors' {r:.4f} s/batch, ratio {r / o:.2f}x")
    return o, r


def augment_timing(folder, args, calls=15):
    """CoTTA's 32x32 augmentation alone: ours (strategies/_tta_augment.py) against the authors'
    ``get_tta_transforms`` on one batch, the same seed (largest difference), then alternating calls."""
    from strategies._tta_augment import CottaAugment
    sys.path.insert(0, folder)
    theirs_aug = importlib.import_module("augmentations.transforms_cotta").get_tta_transforms(32)
    ours_aug = CottaAugment(32)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(args.seed)
    a = [ours_aug(x) for _ in range(4)]
    torch.manual_seed(args.seed)
    b = [theirs_aug(x) for _ in range(4)]
    o, r, _ = alternate(((lambda: ours_aug(x)), (lambda: theirs_aug(x))) for _ in range(calls))
    print(f"CoTTA augmentation, {args.batch} images, {args.threads} threads: largest |difference| {worst(a, b):.3e}; "
          f"median of {calls} alternating calls: ours {o:.4f} s, authors' {r:.4f} s, ratio {r / o:.2f}x")
    return o, r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="all", help=f"one of {', '.join(SPECS)} or 'all'")
    p.add_argument("--reference", default=os.environ.get("CL_TTA_REFERENCE"),
                   help="the classification/ folder of a clone of github.com/mariodoebler/test-time-adaptation "
                        "(or $CL_TTA_REFERENCE)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="test batches adapted on (one more for timing warm-up)")
    p.add_argument("--source-samples", type=int, default=512, help="source images (EATA Fisher, SANTA, GTTA)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", action="store_true", help="print the largest differences instead of timing")
    p.add_argument("--quick", action="store_true", help="--check on 2 batches of 16, 64 source images (the suite)")
    p.add_argument("--augment", action="store_true", help="time CoTTA's augmentation alone against the authors'")
    p.add_argument("--float64", action="store_true",
                   help="with --check: model and batches in float64 on both sides (what differs then is not rounding); "
                        "made for cotta/cotta_cl: other methods may cast their loss or logits to float32 (for AMP), "
                        "which shows as ~1e-6, and those whose extra modules are float32 say so and are skipped")
    args = p.parse_args(argv)
    if args.quick:
        args.check, args.batch, args.batches, args.source_samples = True, 16, 1, 64
    if not args.reference:
        print("skipped: pass --reference <clone of github.com/mariodoebler/test-time-adaptation>/classification "
              "(or set CL_TTA_REFERENCE) to compare our TTA methods with the authors'")
        return None
    names = list(SPECS) if args.method == "all" else args.method.split(",")
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(SPECS)}")
    if args.float64 and not args.check:
        p.error("--float64 goes with --check (it compares results; float64 timings mean nothing here)")
    torch.set_num_threads(args.threads)
    load_builtins()
    ref = load_reference(args.reference)
    if args.augment:
        return augment_timing(ref[0], args)
    model = make_model()
    xs, source, what = load_data(args)
    if args.float64:
        model, xs = model.double(), [x.double() for x in xs]
        what += ", float64"
    print(f"data: {what}; model: CIFAR ResNet-20 ({'shared weights' if os.path.isfile(WEIGHTS) else 'random init'})")
    results = {}
    for name in names:
        try:
            results[name] = (check if args.check else timing)(name, ref, model, xs, source, args)
        except RuntimeError as e:
            if not args.float64:
                raise
            # e.g. a projector or source statistics built in float32 by either side
            print(f"{name}: does not run in float64 ({str(e).splitlines()[0]}); compare it in float32")
    return results


if __name__ == "__main__":
    main()
