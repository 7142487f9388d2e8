"""SANTA: source anchoring -- self-training against a frozen source model plus a prototype
contrastive loss, on the normalization parameters only.

G. Chakrabarty, M. Sreenivas, S. Biswas, "SANTA: Source Anchoring Network and Target Alignment for
Continual Test Time Adaptation", TMLR 2023. Follows the RMT authors' benchmark
(mariodoebler/test-time-adaptation ``classification/methods/santa.py``).

Set-up: the normalization affine parameters are trained (BatchNorm with batch statistics); a frozen
copy of the configured model is the anchor; class prototypes are the mean source feature per class
(features = input of the classifier head, computed with batch-statistics BatchNorm on source
batches of ``batch_size``, at most ~``prototype_samples`` images: collection stops once more have
been seen, as the authors); a projector Linear(D, 128)-ReLU-Linear(128, 128) is trained too.

Per test batch x and one augmented view x' (CoTTA's augmentations, ``strategies/_tta_augment.py``):
  * self-training: mean of 0.5 CE(p(x) -> anchor(x)) + 0.5 CE(p(x') -> anchor(x')), i.e.
    -0.5 sum softmax(z) log softmax(z_anchor) - 0.5 sum softmax(z') log softmax(z_anchor), with the
    anchor's logits of the clean x (the authors' ``AugCrossEntropy``);
  * contrastive: SupCon (Khosla et al. 2020; no labels, every view an anchor, temperature 0.1)
    over the views (nearest source prototype by cosine similarity, feature of x, feature of x')
    after the projector;
  * loss = ``lambda_ce_trg`` * self-training + ``lambda_cont`` * contrastive; one step.
The prediction is the student's, from before the step.

Source data enters only through ``warm_up`` (the prototypes).

Defaults: ``cfgs/cifar10_c/santa.yaml`` (Adam, lr 1e-3, batch 200) and ``conf.py`` SANTA.LAMBDA_CE_TRG
1.0, SANTA.LAMBDA_CONT 1.0, CONTRAST.TEMPERATURE 0.1, CONTRAST.PROJECTION_DIM 128, CONTRAST.MODE
all. ImageNet-C (``imagenet_c/santa.yaml``): optimizer=sgd lr=0.01 momentum=0.9 nesterov=true
batch_size=64.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError, DataError
from cl.models.features import feature_dim, features_and_logits
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_augment import CottaAugment
from strategies.mean_teacher import frozen_copy
from strategies.tta_base import configure_norm_adaptation, source_subset

SOURCE_SEED = 2024          # seeded order of the source images for the prototypes


@dataclass
class SANTAConfig(StrategyConfig):
    name: str = "santa"
    optimizer: str = "adam"        # cfgs/cifar10_c/santa.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.01)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64); also the source batch size
    eval_batch_size: int = 200
    lambda_ce_trg: float = 1.0     # conf.py SANTA.LAMBDA_CE_TRG
    lambda_cont: float = 1.0       # SANTA.LAMBDA_CONT
    temperature: float = 0.1       # CONTRAST.TEMPERATURE
    projection_dim: int = 128      # CONTRAST.PROJECTION_DIM
    prototype_samples: int = 100000  # methods/santa.py stops collecting source features after 100k


def supcon_loss(z, views, temperature):
    """SupCon without labels on ``z`` [V*B, P] (L2-normalized, view-major): for each row, the
    positives are the other views of the same sample, the rest of the rows are negatives."""
    n = z.shape[0]
    b = n // views
    logits = torch.div(z @ z.T, temperature)
    logits = logits - torch.max(logits, dim=1, keepdim=True)[0].detach()
    not_self = 1 - torch.eye(n, device=z.device)
    positive = torch.eye(b, device=z.device).repeat(views, views) * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    mean_log_prob_pos = (positive * log_prob).sum(1) / positive.sum(1)
    return (-mean_log_prob_pos).view(views, b).mean()


@STRATEGIES.register("santa")
class SANTA(Strategy):
    """Self-training against the frozen source model + prototype contrastive loss (norm params)."""

    protocols = ("online",)

    Config = SANTAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.temperature <= 0 or cfg.projection_dim < 1:
            raise ConfigError("strategy.temperature must be > 0 and strategy.projection_dim >= 1.")
        self.anchor = None
        self.projector = None
        self.prototypes = None       # [K, D]
        self.augment = None

    def configure_model(self):
        configure_norm_adaptation(self.model, "santa")
        self.anchor = frozen_copy(self.model)
        d, p = feature_dim(self.model), self.cfg.projection_dim
        self.projector = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Linear(p, p)).to(self.device)
        shape = self.stream.input_shape or None
        if shape is not None and len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1])

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.projector.parameters())

    @torch.no_grad()
    def warm_up(self, source):
        """Class prototypes: mean source feature per class (batch-statistics BatchNorm)."""
        if source is None or len(source) == 0:
            raise ConfigError("santa anchors its contrastive loss on class prototypes of the source data, but the "
                              "scenario has none. Use a scenario with source data (corruption_stream: "
                              "scenario.with_source=true).")
        feats, labels = [], []
        for batch in source_subset(source, -1, SOURCE_SEED).batches(self.cfg.batch_size, device=self.device):
            with self.autocast():
                f, _ = features_and_logits(self.model, batch.x)
            feats.append(f.float())
            labels.append(batch.y)
            if sum(len(v) for v in feats) > self.cfg.prototype_samples:
                break
        feats, labels = torch.cat(feats), torch.cat(labels)
        missing = [k for k in range(self.num_classes) if not (labels == k).any()]
        if missing:
            raise DataError(f"The source data has no samples of classes {missing[:10]}; santa needs a prototype "
                            "for every class. Use more source data (scenario.source_samples).")
        self.prototypes = torch.stack([feats[labels == k].mean(dim=0) for k in range(self.num_classes)])

    def forward_and_adapt(self, x):
        c = self.cfg
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1])
        with torch.enable_grad(), self.autocast():
            feats, logits = features_and_logits(self.model, x)
            feats_aug, logits_aug = features_and_logits(self.model, self.augment(x))
            anchor_logits = self.anchor(x)
            with torch.no_grad():
                sim = F.cosine_similarity(self.prototypes[:, None, :], feats.float()[None], dim=-1)   # [K, B]
                nearest = sim.argmax(0)
            views = torch.cat([self.prototypes[nearest], feats.float(), feats_aug.float()])      # [3B, D]
            z = F.normalize(self.projector(views), p=2, dim=1)
            loss_cont = supcon_loss(z, 3, c.temperature)
            target = anchor_logits.float().log_softmax(1)
            loss_st = (-(1 - 0.5) * (logits.float().softmax(1) * target).sum(1)
                       - 0.5 * (logits_aug.float().softmax(1) * target).sum(1)).mean(0)
            loss = c.lambda_ce_trg * loss_st + c.lambda_cont * loss_cont
        self.optimize(loss)
        return logits.detach().float()

    def extra_state(self):
        return {"projector": self.projector.state_dict()}

    def load_extra_state(self, state):
        self.projector.load_state_dict(state["projector"])
