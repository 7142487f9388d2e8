"""TPT's augmented views and confidence selection (shared by tpt and difftpt).

Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models",
NeurIPS 2022 (arXiv 2209.07511); code azshue/TPT, ``data/datautils.py`` (``AugMixAugmenter``,
``augmix``, ``get_preaugment``), ``data/augmix_ops.py`` (the operations at severity 1) and
``tpt_classification.py`` (``select_confident_samples``, ``avg_entropy``). DiffTPT's cosine filter is
``difftpt_utils.select_confident_samples_cosine`` (chunmeifeng/DiffTPT).

Views are made from the already decoded test image (float [C, H, W] in [0, 1]) with tensor ops;
TPT makes them from the full-resolution PIL image, so crops here come from the model-size image.
Random draws use torch's global generator (the runner reseeds it per domain).
"""
import math

import torch
import torchvision.transforms.v2.functional as TF

__all__ = ["tpt_views", "augmix", "select_confident", "select_cosine_then_entropy", "avg_entropy"]


def _resized_crop(x, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop`` (its default scale/ratio; TPT ``get_preaugment``) back to x's size."""
    _, h, w = x.shape
    for _ in range(10):
        area = h * w * float(torch.empty(1).uniform_(*scale))
        ar = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,)))
            left = int(torch.randint(0, w - cw + 1, (1,)))
            return TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)
    return x


def _level():
    return float(torch.empty(1).uniform_(0.1, 1.0))      # augmix_ops.sample_level(severity=1)


def _sign():
    return 1.0 if float(torch.rand(1)) > 0.5 else -1.0


# augmix_ops at severity 1: level ~ U(0.1, 1); int/float_parameter(level, maxval) = level * maxval / 10
def _autocontrast(x):
    return TF.autocontrast(x)


def _equalize(x):
    return TF.equalize(x)


def _posterize(x):
    bits = 4 - int(_level() * 4 / 10)
    return TF.to_dtype(TF.posterize(TF.to_dtype(x, torch.uint8, scale=True), bits), torch.float32, scale=True)


def _rotate(x):
    return TF.rotate(x, _sign() * int(_level() * 30 / 10), interpolation=TF.InterpolationMode.BILINEAR)


def _solarize(x):
    return TF.solarize(x, (256 - int(_level() * 256 / 10)) / 255.0)


def _shear(axis):
    def op(x):
        s = math.degrees(math.atan(_sign() * _level() * 0.3 / 10))
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[s, 0.0] if axis == 0 else [0.0, s],
                         interpolation=TF.InterpolationMode.BILINEAR)
    return op


def _translate(axis):
    def op(x):
        t = _sign() * int(_level() * (x.shape[-1] / 3) / 10)     # augmix_ops: IMAGE_SIZE / 3 at the model size
        return TF.affine(x, angle=0.0, translate=[t, 0] if axis == 0 else [0, t], scale=1.0, shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.BILINEAR)
    return op


OPS = [_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear(0), _shear(1), _translate(0), _translate(1)]


def augmix(x):
    """TPT ``augmix`` on one image: a random resized crop + flip, then mixed with 3 chains of 1-3
    AugMix operations (weights ~ Dirichlet(1,1,1), skip ~ Beta(1,1))."""
    base = TF.horizontal_flip(_resized_crop(x)) if float(torch.rand(1)) < 0.5 else _resized_crop(x)
    w = torch.distributions.Dirichlet(torch.ones(3)).sample()
    m = float(torch.distributions.Beta(1.0, 1.0).sample())
    mix = torch.zeros_like(base)
    for i in range(3):
        v = base
        for _ in range(int(torch.randint(1, 4, (1,)))):
            v = OPS[int(torch.randint(len(OPS), (1,)))](v)
        mix += w[i] * v
    return m * base + (1 - m) * mix


def tpt_views(x, n_views, use_augmix):
    """``n_views`` views of one image x [C, H, W]: random resized crop + horizontal flip, mixed
    with AugMix operations when ``use_augmix`` (TPT: fine-grained sets; ImageNet variants without)."""
    out = []
    for _ in range(n_views):
        if use_augmix:
            out.append(augmix(x))
        else:
            v = _resized_crop(x)
            out.append(TF.horizontal_flip(v) if float(torch.rand(1)) < 0.5 else v)
    return torch.stack(out).clamp_(0, 1)


def select_confident(logits, top):
    """Indices of the ``int(N * top)`` lowest-entropy rows (TPT ``select_confident_samples``)."""
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    return torch.argsort(ent, descending=False)[:int(ent.shape[0] * top)]


def select_cosine_then_entropy(logits, cosine_top, entropy_top):
    """DiffTPT: keep the ``int((N-1) * cosine_top)`` views whose logits are most cosine-similar to
    the original's (row 0), put the original in front, then keep the ``int(len * entropy_top)``
    lowest-entropy rows of that set. Returns indices into ``logits``."""
    cos = torch.nn.functional.cosine_similarity(logits[1:], logits[:1], dim=1)
    kept = torch.argsort(cos, descending=True)[:int(cos.shape[0] * cosine_top)] + 1
    pool = torch.cat([torch.zeros(1, dtype=torch.long, device=logits.device), kept])
    return pool[select_confident(logits[pool], entropy_top)]


def avg_entropy(logits):
    """Entropy of the mean softmax prediction of the rows (TPT ``avg_entropy``, in log space)."""
    logp = logits.log_softmax(dim=-1)
    avg = (logp.logsumexp(dim=0) - math.log(logp.shape[0])).clamp(min=torch.finfo(logp.dtype).min)
    return -(avg * avg.exp()).sum(dim=-1)
