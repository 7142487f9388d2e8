"""RMT: Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time
Adaptation", CVPR 2023, arXiv 2211.13081. Follows the authors' code (mariodoebler/
test-time-adaptation, classification/methods/rmt.py).

A mean teacher (strategies/mean_teacher.py) with, per test batch x and one augmented view
x' = CoTTA-augment(x) (strategies/_tta_augment.py):
  * self-training: L_st = mean(0.5·SCE(z(x), z_t(x)) + 0.5·SCE(z(x'), z_t(x))), SCE the symmetric
    cross-entropy, z_t the EMA teacher;
  * contrastive loss (SupCon, temperature 0.1, all views as anchors) between the nearest source
    prototype (cosine similarity to the student's feature), the student's feature of x and of x',
    all passed through a projector Linear(D,128)-ReLU-Linear(128,128);
  * optional source replay: + λ_ce_src·CE on one labelled source batch per test batch;
  * loss = λ_ce_trg·L_st + λ_cont·L_cont (+ replay); one step; teacher EMA (momentum 0.999);
  * prediction = student logits + teacher logits (pre-update).
Before the stream: class prototypes = mean source feature per class (computed with the source
model, BN with batch statistics), then a warm-up of ``warmup_samples // batch_size`` steps of
SCE(student, teacher) on source images with a linearly rising learning rate. ``reset()`` restores
the post-warm-up state, as the authors' code does.

Features are the input of the classifier head, read by a hook (cl/models/features.py).

Source data comes from ``scenario.source``. The source-free variant (the authors' scripts/run.sh:
``lambda_ce_src=0 warmup_samples=0``) still builds prototypes from source data; with
``prototypes=classifier`` it instead uses the rows of the classifier weight as class prototypes
(our fallback for when no source data exists; not in the paper) and then never reads the source.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError, DataError
from cl.models.features import classifier_head, feature_dim, features_and_logits
from cl.registry import STRATEGIES
from strategies._tta_augment import CottaAugment
from strategies.mean_teacher import MeanTeacher, MeanTeacherConfig, ema_update, symmetric_ce

SOURCE_SEED = 2023          # fixed shuffling seed of the source stream (resumable by position)


@dataclass
class RMTConfig(MeanTeacherConfig):
    name: str = "rmt"
    consistency: str = "sce"       # paper Eq. (SCE); utils/losses.py SymmetricCrossEntropy
    prediction: str = "ensemble"   # methods/rmt.py: outputs_test + outputs_ema
    ema_momentum: float = 0.999    # conf.py M_TEACHER.MOMENTUM
    lambda_ce_src: float = 1.0     # conf.py RMT.LAMBDA_CE_SRC (0: source-free)
    lambda_ce_trg: float = 1.0     # conf.py RMT.LAMBDA_CE_TRG
    lambda_cont: float = 1.0       # conf.py RMT.LAMBDA_CONT
    temperature: float = 0.1       # conf.py CONTRAST.TEMPERATURE
    projection_dim: int = 128      # conf.py CONTRAST.PROJECTION_DIM
    warmup_samples: int = 50000    # conf.py RMT.NUM_SAMPLES_WARM_UP (0: no warm-up)
    prototypes: str = "source"     # source (authors) | classifier (head weight rows; no source data needed)
    prototype_samples: int = 100000  # methods/rmt.py stops collecting source features after 100k


@STRATEGIES.register("rmt")
class RMT(MeanTeacher):
    """Mean teacher with SCE, prototype contrastive loss, source replay and source warm-up."""

    Config = RMTConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.prototypes not in ("source", "classifier"):
            raise ConfigError(f"strategy.prototypes must be 'source' or 'classifier', got '{cfg.prototypes}'.")
        if cfg.warmup_samples < 0 or cfg.lambda_ce_src < 0 or cfg.lambda_cont < 0:
            raise ConfigError("strategy.warmup_samples, lambda_ce_src and lambda_cont must be >= 0.")
        if cfg.lambda_ce_src > 0 or cfg.warmup_samples > 0 or (cfg.prototypes == "source" and cfg.lambda_cont > 0):
            self.needs_source = ("for lambda_ce_src > 0, warmup_samples > 0 or prototypes=source; the source-free "
                                 "variant is strategy.lambda_ce_src=0 strategy.warmup_samples=0 strategy.prototypes=classifier")
        self.source_data = None
        self.projector = None
        self.prototypes = None
        self.augment = None
        self.src_pos = 0          # source batches drawn so far (warm-up + replay)
        self.last_losses = {}

    # ------------------------------------------------------------------ source data
    def source(self):
        src = self.source_data
        if src is None:
            raise ConfigError("rmt needs labelled source data (scenario.source) for lambda_ce_src > 0, "
                              "warmup_samples > 0 or prototypes=source, but the scenario has none. Use the "
                              "source-free variant: strategy.lambda_ce_src=0 strategy.warmup_samples=0 "
                              "strategy.prototypes=classifier.")
        return src

    def source_batch(self):
        """The next labelled source batch; the order is a seeded permutation per pass, so the
        stream is resumable from ``src_pos`` alone."""
        src, bs = self.source(), self.cfg.batch_size
        epoch, k = divmod(self.src_pos, src.num_batches(bs))
        order = torch.randperm(len(src), generator=torch.Generator().manual_seed(SOURCE_SEED + epoch))
        self.src_pos += 1
        return next(src.subset(order[k * bs:(k + 1) * bs]).batches(bs, device=self.device))

    # ------------------------------------------------------------------ set-up
    def configure_model(self):
        super().configure_model()
        d, p = feature_dim(self.model), self.cfg.projection_dim
        self.projector = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Linear(p, p)).to(self.device)
        shape = self.stream.input_shape
        if len(shape) == 3:
            self.augment = CottaAugment(image_size=shape[-1])

    def parameters_to_train(self):
        return super().parameters_to_train() + list(self.projector.parameters())

    def warm_up(self, source):
        """Prototypes and the source warm-up; the base class snapshots afterwards, so ``reset()``
        returns to the warmed-up state."""
        self.source_data = source
        self.prototypes = self.compute_prototypes()
        self.warmup()

    @torch.no_grad()
    def compute_prototypes(self):
        """[K, D] class prototypes: mean source feature per class, or the classifier's weight rows."""
        if self.cfg.prototypes == "classifier":
            head = classifier_head(self.model)
            weight = head.weight if isinstance(head, nn.Linear) else \
                [m for m in head.modules() if isinstance(m, nn.Linear)][-1].weight
            return weight.detach().float().clone()
        src, bs = self.source(), self.cfg.batch_size
        order = torch.randperm(len(src), generator=torch.Generator().manual_seed(SOURCE_SEED - 1))
        feats, labels = [], []
        for batch in src.subset(order).batches(bs, device=self.device):
            with self.autocast():
                f, _ = features_and_logits(self.model, batch.x)
            feats.append(f.float())
            labels.append(batch.y)
            if sum(len(v) for v in feats) > self.cfg.prototype_samples:
                break
        feats, labels = torch.cat(feats), torch.cat(labels)
        missing = [k for k in range(self.num_classes) if not (labels == k).any()]
        if missing:
            raise DataError(f"Source data has no samples of classes {missing[:10]}; RMT needs every class for "
                            "its prototypes. Use more source data or strategy.prototypes=classifier.")
        return torch.stack([feats[labels == k].mean(0) for k in range(self.num_classes)])

    def warmup(self):
        """SCE(student, teacher) on source images with a linear learning-rate ramp, then EMA."""
        steps = self.cfg.warmup_samples // self.cfg.batch_size
        for i in range(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr * (i + 1) / steps
            x = self.source_batch().x
            with torch.enable_grad(), self.autocast():
                student = self.model(x)
                with torch.no_grad():
                    teacher = self.teacher(x)
                loss = symmetric_ce(student, teacher).mean(0)
            self.optimize(loss)
            ema_update(self.teacher, self.model, self.cfg.ema_momentum)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
        self.updates = 0

    # ------------------------------------------------------------------ online
    def contrastive(self, views):
        """SupCon loss (labels=None, every view an anchor) on ``views`` [V, B, D]: positives are the
        other views of the same sample, negatives all views of other samples."""
        v, b, d = views.shape
        z = F.normalize(self.projector(views.reshape(v * b, d)), dim=1)
        logits = z @ z.t() / self.cfg.temperature
        eye = torch.eye(v * b, dtype=torch.bool, device=z.device)
        log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(1)
        sample = torch.arange(v * b, device=z.device) % b
        positive = (sample[:, None] == sample[None, :]) & ~eye
        return -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()

    def forward_and_adapt(self, x):
        c = self.cfg
        if self.augment is None:
            self.augment = CottaAugment(image_size=x.shape[-1])
        with torch.enable_grad(), self.autocast():
            feats, logits = features_and_logits(self.model, x)
            feats_aug, logits_aug = features_and_logits(self.model, self.augment(x))
            with torch.no_grad():
                teacher = self.teacher(x)
                nearest = F.cosine_similarity(feats.float()[:, None, :], self.prototypes[None], dim=-1).argmax(1)
            views = torch.stack([self.prototypes[nearest].to(feats.dtype), feats, feats_aug])
            loss_cont = self.contrastive(views)
            loss_st = (0.5 * symmetric_ce(logits, teacher) + 0.5 * symmetric_ce(logits_aug, teacher)).mean(0)
            loss = c.lambda_ce_trg * loss_st + c.lambda_cont * loss_cont
            self.last_losses = {"self_training": loss_st.detach(), "contrastive": loss_cont.detach()}
            if c.lambda_ce_src > 0:
                batch = self.source_batch()
                loss_src = F.cross_entropy(self.model(batch.x), batch.y)
                loss = loss + c.lambda_ce_src * loss_src
                self.last_losses["source_ce"] = loss_src.detach()
        self.optimize(loss)
        self.after_update()
        return self.output(logits.detach(), teacher, teacher).float()

    # ------------------------------------------------------------------ state
    def reset(self):
        pos = self.src_pos                 # the source stream goes on, as the authors' iterator does
        super().reset()
        self.src_pos = pos

    def extra_state(self):
        return {**super().extra_state(), "projector": self.projector.state_dict(),
                "prototypes": self.prototypes, "src_pos": self.src_pos}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.projector.load_state_dict(state["projector"])
        if state["prototypes"] is not None:
            self.prototypes = state["prototypes"].to(self.device)
        self.src_pos = int(state["src_pos"])
