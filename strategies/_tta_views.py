"""Per-sample augmented views of test batches, as tensor ops (no PIL), for methods whose authors
draw them in the data loader: AdaContrast's weak/strong views and AugMix views (TTAug, MEMO).

    weak = moco_weak(x)            # x: float [B, C, H, W] in [0, 1]; each image its own draw
    strong = moco_strong(x)
    views = augmix_views(x, n=32)  # [n, B, C, H, W]

The authors (RMT benchmark ``augmentations/transforms_adacontrast.py`` and
``transforms_augmix.py``) apply torchvision/PIL transforms to each decoded image; the operations
and parameter ranges here are theirs, but they act on float tensors, so pixel values are not
rounded to 8 bits between operations and PIL's box-approximated blur is a true Gaussian
(kernel 2*ceil(3*sigma)+1). Random draws use torch's global generator (or ``generator``).
"""
import math

import torch
import torchvision.transforms.functional as TF

from cl.errors import ConfigError


def _check(x, who):
    if x.dim() != 4:
        raise ConfigError(f"{who} draws augmented views of image batches [B, C, H, W], got shape {tuple(x.shape)}; "
                          "use an image scenario.")


def _u(lo, hi, generator):
    return float(torch.empty(1).uniform_(lo, hi, generator=generator))


def _flip(img, generator):
    return TF.hflip(img) if torch.rand(1, generator=generator) < 0.5 else img


def moco_weak(x, generator=None):
    """AdaContrast's weak view ("plain"): a random horizontal flip per image (the random crop of
    the authors' pipeline is the identity for images already at the crop size)."""
    _check(x, "adacontrast")
    return torch.stack([_flip(img, generator) for img in x])


def moco_strong(x, generator=None):
    """AdaContrast's strong view ("moco-v2-light"), per image: with p=0.8 colour jitter
    (brightness, contrast, saturation factors in [0.6, 1.4], hue in [-0.1, 0.1], random order),
    with p=0.2 grayscale, with p=0.5 Gaussian blur (sigma in [0.1, 2]), random horizontal flip."""
    _check(x, "adacontrast")
    out = []
    for img in x:
        if torch.rand(1, generator=generator) < 0.8:
            for op in torch.randperm(4, generator=generator).tolist():
                if op == 3:
                    img = TF.adjust_hue(img, _u(-0.1, 0.1, generator))
                else:
                    fn = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)[op]
                    img = fn(img, _u(0.6, 1.4, generator))
        if img.shape[0] == 3 and torch.rand(1, generator=generator) < 0.2:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if torch.rand(1, generator=generator) < 0.5:
            sigma = _u(0.1, 2.0, generator)
            k = 2 * math.ceil(3 * sigma) + 1
            img = TF.gaussian_blur(img.unsqueeze(0), [k, k], [sigma, sigma]).squeeze(0)
        out.append(_flip(img, generator))
    return torch.stack(out).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------- AugMix (TTAug, MEMO)
# The nine operations of the authors' ``augmix_ops.augmentations`` (no colour, contrast, brightness
# or sharpness: they overlap with the corruptions), each applied to a batch of images with one
# random level (and sign) per image: (imgs [N, C, H, W], severity, generator) -> imgs.

def _levels(n, severity, generator, device):
    """The authors' ``sample_level`` per image: uniform in [0.1, severity]."""
    return 0.1 + (float(severity) - 0.1) * torch.rand(n, generator=generator).to(device)


def _signs(n, generator, device):
    return torch.where(torch.rand(n, generator=generator) > 0.5, -1.0, 1.0).to(device)


def pil_affine(imgs, coeffs):
    """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR)`` per image (``coeffs`` [N, 6]):
    output pixel (x, y) takes the input at (a x + b y + c, d x + e y + f), pixel centres at +0.5,
    zeros outside."""
    n, _, h, w = imgs.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=imgs.device) + 0.5, torch.arange(w, device=imgs.device) + 0.5,
                            indexing="ij")
    a, b, c, d, e, f = (coeffs[:, k].view(n, 1, 1).to(imgs.dtype) for k in range(6))
    grid = torch.stack([(a * xs + b * ys + c) / w * 2 - 1, (d * xs + e * ys + f) / h * 2 - 1], dim=-1)
    return torch.nn.functional.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _affine_op(kind):
    def op(imgs, severity, generator):
        n, dev = len(imgs), imgs.device
        h, w = imgs.shape[-2:]
        level = _levels(n, severity, generator, dev)
        sign = _signs(n, generator, dev)
        one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        if kind == "rotate":                       # PIL rotate(deg): counter-clockwise about the centre
            phi = -torch.deg2rad(torch.floor(level * 30 / 10) * sign)
            cx, cy = w / 2, h / 2
            a, b, d, e = torch.cos(phi), torch.sin(phi), -torch.sin(phi), torch.cos(phi)
            coeffs = [a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy]
        elif kind in ("shear_x", "shear_y"):
            lv = level * 0.3 / 10 * sign
            coeffs = [one, lv, zero, zero, one, zero] if kind == "shear_x" else [one, zero, zero, lv, one, zero]
        else:
            lv = torch.floor(level * (w / 3) / 10) * sign
            coeffs = [one, zero, lv, zero, one, zero] if kind == "translate_x" else [one, zero, zero, zero, one, lv]
        return pil_affine(imgs, torch.stack(coeffs, dim=1))
    return op


def _to_u8(imgs):
    return (imgs * 255).round().to(torch.uint8)


def _posterize(imgs, severity, generator):
    bits = 4 - torch.floor(_levels(len(imgs), severity, generator, imgs.device) * 4 / 10).long()
    mask = ((0xFF << (8 - bits)) & 0xFF).to(torch.uint8).view(-1, 1, 1, 1)
    return (_to_u8(imgs) & mask).float() / 255


def _solarize(imgs, severity, generator):
    level = torch.floor(_levels(len(imgs), severity, generator, imgs.device) * 256 / 10)
    threshold = ((256 - level) / 255).view(-1, 1, 1, 1)
    return torch.where(imgs >= threshold, 1.0 - imgs, imgs)


AUGMIX_OPS = [
    lambda imgs, s, g: TF.autocontrast(imgs),
    lambda imgs, s, g: TF.equalize(_to_u8(imgs)).float() / 255,
    _posterize, _affine_op("rotate"), _solarize,
    _affine_op("shear_x"), _affine_op("shear_y"), _affine_op("translate_x"), _affine_op("translate_y"),
]


def _preaugment(imgs, generator):
    """The authors' ``get_preaugment`` per image: CIFAR-size images (side < 64) a random crop with
    4-pixel zero padding, larger ones a random resized crop (scale 0.08-1, ratio 3/4-4/3); then a
    random horizontal flip."""
    n, _, h, w = imgs.shape
    out = []
    if max(h, w) < 64:
        padded = TF.pad(imgs, [4, 4, 4, 4])
        offsets = torch.randint(0, 9, (n, 2), generator=generator).tolist()
        out = [padded[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(offsets)]
    else:
        for img in imgs:
            for _ in range(10):
                area = h * w * _u(0.08, 1.0, generator)
                ratio = math.exp(_u(math.log(3 / 4), math.log(4 / 3), generator))
                cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    i = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                    j = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                    break
            else:
                ch = cw = min(h, w)
                i, j = (h - ch) // 2, (w - cw) // 2
            out.append(TF.resized_crop(img, i, j, ch, cw, [h, w], antialias=True))
    out = torch.stack(out)
    flip = (torch.rand(n, generator=generator) < 0.5).to(imgs.device).view(-1, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def augmix_views(x, n, severity=1, generator=None):
    """``n`` AugMix views (Hendrycks et al., ICLR 2020) of every image of ``x`` [B, C, H, W] ->
    [n, B, C, H, W], as the authors' ``augmix``: x0 = pre-augmented image, view = m x0 + (1 - m)
    sum_i w_i chain_i(x0) with m ~ U(0, 1), w ~ Dir(1, 1, 1), 3 chains of 1-3 random operations
    at ``severity``. Pixel values stay float between operations (the authors' PIL images are 8-bit)."""
    _check(x, "AugMix views")
    b, c, h, w = x.shape
    x0 = _preaugment(x.repeat(n, 1, 1, 1), generator)                       # [n*B, C, H, W]
    total = len(x0)
    e = -torch.log(torch.rand(total, 3, generator=generator)).to(x.device)  # Dirichlet(1, 1, 1)
    weights = e / e.sum(1, keepdim=True)
    m = torch.rand(total, generator=generator).to(x.device).view(-1, 1, 1, 1)
    chains = x0.unsqueeze(1).expand(total, 3, c, h, w).reshape(total * 3, c, h, w).clone()
    depth = torch.randint(1, 4, (total * 3,), generator=generator)
    for step in range(3):
        ops = torch.randint(0, len(AUGMIX_OPS), (total * 3,), generator=generator)
        for k, op in enumerate(AUGMIX_OPS):
            sel = torch.nonzero((depth > step) & (ops == k)).flatten().to(x.device)
            if len(sel):
                chains[sel] = op(chains[sel], severity, generator).clamp(0.0, 1.0)
    mix = (weights.view(total, 3, 1, 1, 1) * chains.view(total, 3, c, h, w)).sum(1)
    return (m * x0 + (1 - m) * mix).view(n, b, c, h, w)
