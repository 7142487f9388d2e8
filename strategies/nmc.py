"""NMC: nearest class mean on a frozen pretrained backbone.

Paper: Janson, Zhang, Aljundi, Elhoseiny, "A Simple Baseline that Questions the Use of
Pretrained-Models in Continual Learning", NeurIPS 2022 Workshop on Distribution Shifts,
arXiv 2210.04428. Authors' code: github.com/Pauljanson002/pretrained-cl (``main_cifar100.py``).

As in the authors' code: the backbone (timm ``vit_base_patch16_224_in21k``, today's tag
``vit_base_patch16_224.augreg_in21k``) is frozen; the feature of an image is the final-norm CLS
token, L2-normalized (``F.normalize``); a class mean is the plain average of its normalized
features (not re-normalized); prediction is the nearest class mean in Euclidean distance over all
classes seen so far (one head). Inputs are only resized to 224 (no mean/std normalization).

Our implementation keeps per-class running sums and counts, updated batch by batch in
``train_step``, so it is task-free (works with ``hide_boundaries=true``) and classes may recur.
Each training image passes the backbone once: ``train_data`` returns the cached features of the
experience (``strategies._features.FeatureCache``), and with ``epochs > 1`` only the first pass over them
updates the sums (repeating a fixed feature set does not change a mean). Evaluation reuses the
cached features of each test set, so the whole accuracy matrix costs one backbone pass per test
image. Training augmentation is not used (the paper has none). There is no optimizer.

Logits for evaluation are ``-||f - mu_c||`` for seen classes and -1e9 for unseen ones.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.data import TensorData
from strategies._features import Backbone, FeatureCache
from cl.registry import STRATEGIES
from cl.strategy import Strategy

UNSEEN = -1e9   # logit of a class without a mean yet


@dataclass
class NMCConfig(StrategyConfig):
    name: str = "nmc"
    batch_size: int = 512           # authors' main_cifar100.py (batch 512); no effect on the means
    eval_batch_size: int = 512      # idem
    epochs: int = 1                 # one pass suffices; extra epochs are no-ops (features cached)
    input_size: int = 0             # resize inputs to NxN before the backbone; 224 for ViT-B/16 (paper: Resize(224)); 0: as served
    normalize_features: bool = True  # L2-normalize features before averaging (paper: F.normalize)


@STRATEGIES.register("nmc")
class NMC(Strategy):
    """Nearest class mean of L2-normalized frozen-backbone features (Janson et al. 2022)."""

    Config = NMCConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone = Backbone(self.model, input_size=self.cfg.input_size)
        self.cache = FeatureCache(self.embed, batch_size=self.cfg.eval_batch_size, device=self.device,
                                  autocast=self.autocast)
        self.sums = None              # [num_classes, D] running sums of normalized features
        self.counts = torch.zeros(self.num_classes, dtype=torch.long)
        self._remaining = 0           # samples of the current train data not yet accumulated

    # ------------------------------------------------------------------ set-up
    def configure_model(self):
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def parameters_to_train(self):
        return []

    @torch.no_grad()
    def embed(self, x):
        """Images [B, ...] in [0, 1] -> (normalized) features [B, D]."""
        self.model.eval()
        f = self.backbone(x).float()
        return F.normalize(f, dim=1) if self.cfg.normalize_features else f

    # ------------------------------------------------------------------ training
    def train_data(self, exp):
        """The experience's features (computed once), served as a TensorData of float vectors."""
        feats = self.cache.get(exp.train)
        self._remaining = len(feats)
        return TensorData(feats, exp.train.y.to(feats.device))

    @torch.no_grad()
    def train_step(self, batch):
        """Add the batch's features to the per-class running sums (no gradient step)."""
        x, y = batch.x, batch.y
        if x.dim() > 2:                 # raw images (train_step called directly): embed them
            x = self.embed(x)
            self._remaining = max(self._remaining, len(y))
        take = min(self._remaining, len(y))
        if take > 0:
            self.accumulate(x[:take], y[:take])
            self._remaining -= take
        return torch.zeros((), device=x.device)

    def accumulate(self, feats, y):
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
        self.sums.index_add_(0, y.to(self.sums.device), feats.to(self.sums.dtype))
        self.counts += torch.bincount(y.cpu(), minlength=self.num_classes)

    def class_means(self):
        """[num_classes, D] means (rows of unseen classes are zero) and the seen mask [num_classes]."""
        seen = self.counts > 0
        means = self.sums / self.counts.clamp(min=1).to(self.sums).unsqueeze(1)
        return means.float(), seen.to(means.device)

    # ------------------------------------------------------------------ prediction
    def logits_from_features(self, feats):
        if self.sums is None:
            return feats.new_zeros(len(feats), self.num_classes)
        means, seen = self.class_means()
        dist = torch.cdist(feats.float(), means.to(feats.device))
        return torch.where(seen.to(feats.device), -dist, torch.full_like(dist, UNSEEN))

    @torch.no_grad()
    def predict(self, x):
        return self.logits_from_features(self.embed(x))

    @torch.no_grad()
    def predict_data(self, data, batch_size, device):
        feats = self.cache.get(data)
        for start in range(0, len(feats), batch_size):
            f = feats[start:start + batch_size].to(device)
            yield self.logits_from_features(f), data.y[start:start + batch_size].to(device)

    # ------------------------------------------------------------------ state
    def extra_state(self):
        state = {"counts": self.counts.clone()}
        if self.sums is not None:
            state["sums"] = self.sums.detach().cpu()
        return state

    def load_extra_state(self, state):
        self.counts = state["counts"].clone().long()
        self.sums = state["sums"].to(self.device) if "sums" in state else None

    def results(self):
        # (``self.cache.computed`` counts backbone passes of this process; it is work, not a result,
        # and a resumed run recomputes its evaluation features, so it is not reported here.)
        return {"classes_with_mean": int((self.counts > 0).sum())}
