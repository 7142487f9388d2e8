"""CoTTA's test-time augmentation pipeline as batched tensor ops (no per-sample PIL).

Reference: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022, arXiv 2203.13591,
§3.2 ("augmentation-averaged pseudo-labels"); the pipeline is the authors' ``get_tta_transforms``
in qinenergy/cotta ``cifar/cotta.py`` (with ``ColorJitterPro`` and ``GaussianNoise`` from
``cifar/my_transforms.py``): brightness/contrast/saturation/hue/gamma jitter in random order, edge
padding, random affine, Gaussian blur, centre crop, horizontal flip, Gaussian noise. RMT
(arXiv 2211.13081) uses the same pipeline for its augmented view (mariodoebler/test-time-adaptation
``classification/augmentations/transforms_cotta.py``, ``get_tta_transforms``).

As in the authors' code, one call draws ONE set of random parameters and applies it to the whole
batch (only the additive noise differs per pixel). The draws are taken in the same order and
with the same calls as the authors' torchvision pipeline, so with the same torch seed (CPU) the
output is identical to theirs: ``python -m benchmarks.cotta_reference --check`` and
``python -m benchmarks.rmt_reference --check`` (each with ``--reference`` a clone of the authors'
repository) run both pipelines inside the two methods and find no difference.

    aug = CottaAugment(image_size=32)
    views = [aug(x) for _ in range(32)]        # x: float [B, C, H, W] in [0, 1]
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode
from torchvision.transforms._functional_tensor import _gen_affine_grid, _get_gaussian_kernel2d, _rgb2hsv
from torchvision.transforms.functional import _get_inverse_affine_matrix

from cl.errors import ConfigError


@dataclass(frozen=True)
class CottaAugmentParams:
    """Ranges of the random augmentation (the authors' ``soft=False`` values)."""
    brightness: tuple = (0.6, 1.4)
    contrast: tuple = (0.7, 1.3)
    saturation: tuple = (0.5, 1.5)
    hue: tuple = (-0.06, 0.06)
    gamma: tuple = (0.7, 1.3)
    degrees: tuple = (-15.0, 15.0)
    translate: float = 1 / 16          # fraction of the padded image size
    scale: tuple = (0.9, 1.1)
    blur_kernel: int = 5
    blur_sigma: tuple = (0.001, 0.5)
    flip_p: float = 0.5
    noise_std: float = 0.005
    padding_mode: str = "edge"         # the RMT benchmark's ROID/CMF views pad with "reflect"
    blur_and_noise: bool = True        # False: no Gaussian blur and no noise (``cotta_augs=False``)


# The view of ROID and CMF (RMT benchmark ``get_tta_transforms(..., padding_mode="reflect", cotta_augs=False)``).
ROID_VIEW = CottaAugmentParams(padding_mode="reflect", blur_and_noise=False)

SOFT = CottaAugmentParams(brightness=(0.8, 1.2), contrast=(0.85, 1.15), saturation=(0.75, 1.25),
                          hue=(-0.03, 0.03), gamma=(0.85, 1.15), degrees=(-8.0, 8.0),
                          scale=(0.95, 1.05), blur_sigma=(0.001, 0.25))


def _uniform(lo, hi, generator):
    return float(torch.empty(1).uniform_(float(lo), float(hi), generator=generator).item())


# output channel r, g, b for hue sector 0..5, as an index into the candidates (v, q, p, t)
_HUE_PICK = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])


def _rgb_to_hsv(x):
    """torchvision's ``_rgb2hsv`` as three tensors ``(h, s, v)``, the same operations in the same
    order except the channel max/min, taken elementwise (the same values: max is exact)."""
    r, g, b = x.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _adjust_hue(x, hue_factor):
    """torchvision's ``adjust_hue`` on float RGB, bit for bit, with cheaper colour-space steps: the
    channel max/min are elementwise, and where torchvision selects each output channel's value among
    six candidates by an einsum with a one-hot mask (a sum of exact zeros and one exact product),
    this gathers it from the four distinct candidates directly."""
    if x.shape[-3] == 1:                                   # as torchvision (PIL): grey images unchanged
        return x
    if not -0.5 <= hue_factor <= 0.5:
        raise ConfigError(f"hue shift {hue_factor} is outside [-0.5, 0.5].")
    dtype = x.dtype
    h, s, v = _rgb_to_hsv(x.to(torch.float32))             # torchvision computes the hue shift in float32
    h = (h + hue_factor) % 1.0
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = (i.to(dtype=torch.int32) % 6).long()
    p = torch.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = torch.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = torch.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    candidates = torch.stack((v, q, p, t), dim=-1)                       # [..., H, W, 4]
    pick = _HUE_PICK.to(x.device).index_select(0, i.reshape(-1)).view(*i.shape, 3)
    out = candidates.gather(-1, pick)                                    # [..., H, W, 3]
    # torchvision's einsum returns this channels-last layout, and the reductions of the ops that
    # follow (contrast's mean) sum in layout order: the same layout keeps their rounding the same
    return (out.movedim(-1, -3) if out.dim() == 4 else out.movedim(-1, -3).contiguous()).to(dtype)


def _pad(x, pad, mode):
    """torchvision's ``pad`` of a batch, returned contiguous (the grid sampling reads it as one image of
    B*C channels); edge padding by copies, which is exact and faster than ``replication_pad2d``."""
    if mode != "edge":
        return TF.pad(x.contiguous(), [pad, pad, pad, pad], padding_mode=mode)
    b, c, h, w = x.shape
    out = x.new_empty((b, c, h + 2 * pad, w + 2 * pad))
    mid = out[:, :, pad:pad + h]
    mid[..., pad:pad + w] = x
    mid[..., :pad] = x[..., :1]
    mid[..., pad + w:] = x[..., -1:]
    out[:, :, :pad] = out[:, :, pad:pad + 1]
    out[:, :, pad + h:] = out[:, :, pad + h - 1:pad + h]
    return out


class CottaAugment:
    """Callable ``aug(x, generator=None) -> x'`` on float images ``[B, C, H, W]`` in [0, 1].

    ``generator`` (a CPU ``torch.Generator``) draws the parameters; ``None`` uses torch's global
    RNG, as the authors' code does. The noise is drawn on ``x.device``.
    """

    def __init__(self, image_size, params=CottaAugmentParams()):
        self.size = int(image_size)
        self.p = params

    def __call__(self, x, generator=None):
        if x.dim() != 4:
            raise ConfigError(f"CoTTA augmentations need image batches [B, C, H, W], got shape "
                              f"{tuple(x.shape)}; use an image scenario or n_augmentations=0.")
        p = self.p
        x = x.clamp(0.0, 1.0)
        x = self._color_jitter(x, generator)
        pad = self.size // 2
        x = _pad(x, pad, p.padding_mode)
        # random affine (rotation, integer translation, scale), bilinear, zero fill
        angle = _uniform(*p.degrees, generator)
        max_dx, max_dy = p.translate * x.shape[-1], p.translate * x.shape[-2]
        tx = int(round(_uniform(-max_dx, max_dx, generator)))
        ty = int(round(_uniform(-max_dy, max_dy, generator)))
        scale = _uniform(*p.scale, generator)
        sigma = _uniform(*p.blur_sigma, generator) if p.blur_and_noise else None
        x = self._affine_blur_crop(x, angle, tx, ty, scale, sigma)
        if torch.rand(1, generator=generator) < p.flip_p:
            x = TF.hflip(x)
        if not p.blur_and_noise:
            return x.clamp(0.0, 1.0)
        noise_gen = generator if generator is None or generator.device == x.device else None
        x = x + p.noise_std * torch.randn(x.shape, generator=noise_gen, device=x.device)
        return x.clamp(0.0, 1.0)

    def _affine_blur_crop(self, x, angle, tx, ty, scale, sigma):
        """``center_crop(gaussian_blur(affine(x)))`` of torchvision, computed only where the crop needs it.

        The affine warp and the blur are per-pixel computations, so the crop's pixels (plus the
        blur's margin) come out exactly as in the full-size pipeline: the sampling grid is
        torchvision's grid for the whole padded image, sliced; ``grid_sample`` and the depthwise
        convolution then run on a third of the pixels (tests/test_tta_augment_fast.py checks that
        the result is bit-identical to torchvision's ``affine``/``gaussian_blur``/``center_crop``).
        """
        p, (h, w), c = self.p, x.shape[-2:], x.shape[1]
        matrix = _get_inverse_affine_matrix([0.0, 0.0], angle, [float(tx), float(ty)], scale, [0.0, 0.0])
        theta = torch.tensor(matrix, dtype=x.dtype, device=x.device).reshape(1, 2, 3)
        grid = _gen_affine_grid(theta, w=w, h=h, ow=w, oh=h)
        m = p.blur_kernel // 2 if sigma is not None else 0
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        if top < m or left < m:     # the blur margin would reach the border: torchvision's full path
            x = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                          interpolation=InterpolationMode.BILINEAR, fill=[0.0] * c)
            if sigma is not None:
                x = TF.gaussian_blur(x, [p.blur_kernel, p.blur_kernel], [sigma, sigma])
            return TF.center_crop(x, [self.size, self.size])
        grid = grid[:, top - m:top + self.size + m, left - m:left + self.size + m]
        # one grid for the whole batch: the images' channels are sampled as the channels of one
        # image (the same per-channel arithmetic), and the fill mask (torchvision samples an extra
        # channel of ones per image) once; the result is written channels-last, where the depthwise
        # blur convolution is faster (and sums the same products in the same order: tested)
        b, oh, ow = x.shape[0], grid.shape[1], grid.shape[2]
        y = F.grid_sample(x.reshape(1, b * c, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False).view(b, c, oh, ow)
        mask = F.grid_sample(torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device), grid, mode="bilinear",
                             padding_mode="zeros", align_corners=False)
        layout = torch.channels_last if x.dtype == torch.float32 else torch.contiguous_format   # (tested: float32)
        out = torch.empty((b, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=layout)
        y = torch.mul(y, mask, out=out).add_((1.0 - mask) * torch.zeros(1, c, 1, 1, dtype=x.dtype, device=x.device))
        if sigma is None:
            return y.contiguous()
        kernel = _get_gaussian_kernel2d([p.blur_kernel, p.blur_kernel], [sigma, sigma], dtype=x.dtype,
                                        device=x.device)
        return F.conv2d(y, kernel.expand(c, 1, *kernel.shape), groups=c).contiguous()

    def _color_jitter(self, x, generator):
        """Brightness, contrast, saturation, hue and gamma, in a random order (one draw each)."""
        p = self.p
        for op in torch.randperm(5, generator=generator).tolist():
            if op == 0:
                x = TF.adjust_brightness(x, _uniform(*p.brightness, generator))
            elif op == 1:
                x = TF.adjust_contrast(x, _uniform(*p.contrast, generator))
            elif op == 2:
                x = TF.adjust_saturation(x, _uniform(*p.saturation, generator))
            elif op == 3:
                x = _adjust_hue(x, _uniform(*p.hue, generator))
            else:
                gamma = _uniform(*p.gamma, generator)
                x = TF.adjust_gamma(x.clamp(1e-8, 1.0), gamma)   # clamp: as the authors, avoids NaN
        return x
