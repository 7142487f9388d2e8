"""DeYO: destroy your object -- entropy minimization on samples whose prediction depends on shape.

J. Lee, D. Jung, S. Lee, J. Park, J. Shin, U. Hwang, S. Yoon, "Entropy is not Enough for Test-Time
Adaptation: From the Perspective of Disentangled Factors", ICLR 2024 (arXiv:2403.07366). Follows
the RMT authors' benchmark (mariodoebler/test-time-adaptation ``classification/methods/deyo.py``,
built on Jhyun17/DeYO).

Per test batch (normalization affine parameters trained except the top layers, as SAR;
BatchNorm with batch statistics):
  1. keep samples with entropy H(x) < ``margin`` * ln K;
  2. x' = the kept images with their object structure destroyed (``aug_type``): ``patch`` cuts
     each image into ``patch_len`` x ``patch_len`` patches and shuffles them (one random order per
     image), ``pixel`` shuffles the pixels (one order for the batch), ``occ`` paints a square of
     the image's mean colour;
  3. PLPD = p_y(x) - p_y(x') for y = argmax p(x) (x' predicted without gradient, with its own
     batch statistics); keep samples with PLPD > ``plpd``;
  4. loss = mean of H(x) * (1/exp(H(x) - E0) + 1/exp(-PLPD)) over the kept samples (weights not
     differentiated; ``reweight_ent`` / ``reweight_plpd`` switch the terms), E0 = ``margin_e0``*ln K;
  5. one step if any sample is left. The prediction is the one made before the step.
Random draws (patch orders, pixel order) use torch's global generator on the CPU, as the authors.

Defaults: ``cfgs/cifar10_c/deyo.yaml`` (Adam, lr 1e-3, batch 200) and ``conf.py`` (DEYO.MARGIN 0.5,
EATA.MARGIN_E0 0.4, DEYO.PLPD 0.2, AUG_TYPE patch, PATCH_LEN 4, OCCLUSION_SIZE 112, ROW_START 56,
COLUMN_START 56, REWEIGHT_ENT / REWEIGHT_PLPD true). ImageNet-C (``imagenet_c/deyo.yaml``):
optimizer=sgd lr=0.00025 momentum=0.9 nesterov=true batch_size=64.
"""
import math
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import configure_norm_adaptation, softmax_entropy

AUG_TYPES = ("patch", "pixel", "occ")


@dataclass
class DeYOConfig(StrategyConfig):
    name: str = "deyo"
    optimizer: str = "adam"        # cfgs/cifar10_c/deyo.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.00025)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    margin: float = 0.5            # conf.py DEYO.MARGIN, times ln(num_classes)
    margin_e0: float = 0.4         # conf.py EATA.MARGIN_E0, times ln(num_classes)
    plpd: float = 0.2              # DEYO.PLPD threshold
    aug_type: str = "patch"        # DEYO.AUG_TYPE: patch | pixel | occ
    patch_len: int = 4             # DEYO.PATCH_LEN
    occlusion_size: int = 112      # DEYO.OCCLUSION_SIZE (aug_type=occ)
    row_start: int = 56            # DEYO.ROW_START
    column_start: int = 56         # DEYO.COLUMN_START
    reweight_ent: bool = True      # DEYO.REWEIGHT_ENT
    reweight_plpd: bool = True     # DEYO.REWEIGHT_PLPD
    skip_top_layers: bool = True   # methods/deyo.py collect_params leaves layer4 / blocks 9-11 / norm out


def shuffle_patches(x, n):
    """Each image of ``x`` [B, C, H, W] cut into n x n patches put back in a random order per image
    (``torch.rand`` on the CPU); images whose side is not a multiple of n are resized to the
    nearest smaller multiple first and back afterwards."""
    side = x.shape[-1]
    inner = side // n * n
    if inner != side:
        x = TF.resize(x, [inner, inner])
    b, c, h, w = x.shape
    patches = x.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c, h // n, w // n)
    order = torch.argsort(torch.rand(b, n * n), dim=-1)
    patches = patches[torch.arange(b).unsqueeze(-1), order]
    x = patches.reshape(b, n, n, c, h // n, w // n).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return TF.resize(x, [side, side]) if inner != side else x


@STRATEGIES.register("deyo")
class DeYO(Strategy):
    """Entropy minimization filtered and weighted by the pseudo-label probability difference (PLPD)."""

    protocols = ("online",)

    Config = DeYOConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.aug_type not in AUG_TYPES:
            raise ConfigError(f"strategy.aug_type must be one of {', '.join(AUG_TYPES)}, got '{cfg.aug_type}'.")
        if cfg.patch_len < 1:
            raise ConfigError(f"strategy.patch_len must be >= 1, got {cfg.patch_len}.")
        self.deyo_margin = cfg.margin * math.log(self.num_classes)
        self.margin_e0 = cfg.margin_e0 * math.log(self.num_classes)

    def configure_model(self):
        configure_norm_adaptation(self.model, "deyo", skip_top=self.cfg.skip_top_layers)

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def destroy(self, x):
        """x' of step 2 (a new tensor; ``x`` is not modified)."""
        c = self.cfg
        if x.dim() != 4:
            raise ConfigError(f"deyo destroys the structure of images [B, C, H, W], got shape {tuple(x.shape)}.")
        x = x.detach().clone()
        if c.aug_type == "occ":
            mean = x.reshape(x.shape[0], x.shape[1], -1).mean(dim=2)[..., None, None]
            r, k = c.row_start, c.column_start
            x[:, :, r:r + c.occlusion_size, k:k + c.occlusion_size] = \
                mean.expand(-1, -1, c.occlusion_size, c.occlusion_size)
            return x
        if c.aug_type == "patch":
            return shuffle_patches(x, c.patch_len)
        b, ch, h, w = x.shape
        return x.reshape(b, ch, h * w)[:, :, torch.randperm(h * w)].reshape(b, ch, h, w)

    def deyo_loss(self, x, logits):
        """The loss of steps 1-4, or None when every sample was filtered out."""
        c = self.cfg
        ent = softmax_entropy(logits)
        keep1 = torch.where(ent < self.deyo_margin)
        ent = ent[keep1]
        if len(ent) == 0:
            return None
        with torch.no_grad():
            logits_prime = self.model(self.destroy(x[keep1]))
        probs = logits[keep1].softmax(1)
        cls = probs.argmax(dim=1).reshape(-1, 1)
        plpd = (torch.gather(probs, 1, cls) - torch.gather(logits_prime.float().softmax(1), 1, cls)).reshape(-1)
        keep2 = torch.where(plpd > c.plpd)
        ent, plpd = ent[keep2], plpd[keep2]
        if len(ent) == 0:
            return None
        if c.reweight_ent or c.reweight_plpd:
            coeff = (float(c.reweight_ent) * (1. / torch.exp(ent.clone().detach() - self.margin_e0))
                     + float(c.reweight_plpd) * (1. / torch.exp(-1. * plpd.clone().detach())))
            ent = ent.mul(coeff)
        return ent.mean(0)

    def forward_and_adapt(self, x):
        with torch.enable_grad(), self.autocast():
            logits = self.model(x)
            loss = self.deyo_loss(x, logits.float())
        if loss is not None:
            self.optimize(loss)
        return logits.detach().float()
