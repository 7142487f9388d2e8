"""AdaContrast: contrastive test-time adaptation with online pseudo-label refinement.

D. Chen, D. Wang, T. Darrell, S. Ebrahimi, "Contrastive Test-Time Adaptation", CVPR 2022
(arXiv:2204.10377). Follows the RMT authors' benchmark (mariodoebler/test-time-adaptation
``classification/methods/adacontrast.py``, built on DianCh/AdaContrast).

Every weight and bias is trained; the model runs in train mode while adapting (BatchNorm with
batch statistics, running statistics updated) and predicts in eval mode. A key encoder (EMA of
the model, momentum ``momentum_teacher``, over all parameters) and a MoCo queue of ``queue_size``
normalized key features with their pseudo-labels (initialized at random, as MoCo) are kept, plus a
bank of the key encoder's features and probabilities of the last ``queue_size`` weak views.

Per test batch x with a weak view w and two strong views q, k (``strategies/_tta_views.py``):
  1. pseudo-labels of w: argmax of the model's prediction for the first 1024 samples of the
     stream, afterwards the mean probability of the ``num_neighbors`` nearest bank entries
     (cosine distance of the model's features of w to the bank's features);
  2. the key encoder is moved towards the model (EMA), then keys = its features of k; queries =
     the model's features of q; instance logits [q.k, q.queue] / ``temperature``; the queue takes
     the keys and their pseudo-labels;
  3. loss = ``alpha`` CE(f(q), pseudo) + ``beta`` CE(instance logits, 0) with the queue entries of
     the same pseudo-label masked out (``class_aware``) + ``eta`` sum(p_bar log(p_bar + 1e-8)),
     p_bar the mean prediction for q (diversity); one step;
  4. the bank takes the key encoder's features and probabilities of w (after the step).
The returned prediction is the model's on x in eval mode, after the step. A reset restores the
initial queue (the authors draw a new random one) and empties the bank.

Defaults: ``cfgs/cifar10_c/adacontrast.yaml`` (SGD, lr 2e-4, momentum 0.9, weight decay 1e-4,
nesterov, batch 200, CONTRAST.TEMPERATURE 0.07; same for ImageNet-C with batch 64) and ``conf.py``
ADACONTRAST.* (QUEUE_SIZE 16384, CONTRAST_TYPE class_aware, CE_SUP_TYPE weak_strong, ALPHA, BETA,
ETA 1.0, DIST_TYPE cosine, NUM_NEIGHBORS 10) and M_TEACHER.MOMENTUM 0.999.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models.features import feature_dim, features_and_logits
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tta_views import moco_strong, moco_weak
from strategies.mean_teacher import frozen_copy, weight_and_bias

WARMUP_SAMPLES = 1024       # methods/adacontrast.py: plain argmax pseudo-labels for the first 1024 samples


@dataclass
class AdaContrastConfig(StrategyConfig):
    name: str = "adacontrast"
    optimizer: str = "sgd"         # cfgs/cifar10_c/adacontrast.yaml OPTIM.METHOD SGD
    lr: float = 2e-4               # OPTIM.LR 0.0002
    momentum: float = 0.9          # OPTIM.MOMENTUM 0.9
    weight_decay: float = 1e-4     # OPTIM.WD 0.0001
    nesterov: bool = True          # OPTIM.NESTEROV True
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    temperature: float = 0.07      # CONTRAST.TEMPERATURE 0.07
    momentum_teacher: float = 0.999  # conf.py M_TEACHER.MOMENTUM (key encoder EMA)
    queue_size: int = 16384        # ADACONTRAST.QUEUE_SIZE (MoCo queue and feature bank)
    contrast_type: str = "class_aware"  # ADACONTRAST.CONTRAST_TYPE: class_aware | plain
    alpha: float = 1.0             # ADACONTRAST.ALPHA (classification)
    beta: float = 1.0              # ADACONTRAST.BETA (instance discrimination)
    eta: float = 1.0               # ADACONTRAST.ETA (diversity)
    num_neighbors: int = 10        # ADACONTRAST.NUM_NEIGHBORS
    dist_type: str = "cosine"      # ADACONTRAST.DIST_TYPE: cosine | euclidean


def distances(x, y, kind):
    """[N, M] distances between the rows of ``x`` and ``y``: cosine (1 - cos) or euclidean."""
    if kind == "euclidean":
        return torch.cdist(x, y)
    return 1 - torch.matmul(F.normalize(x, dim=1), F.normalize(y, dim=1).T)


@torch.no_grad()
def nearest_neighbor_probs(feats, bank_feats, bank_probs, kind, k):
    """Mean probability of the ``k`` nearest bank entries of each row of ``feats`` (in chunks of 64)."""
    out = []
    for chunk in feats.split(64):
        _, idx = distances(chunk, bank_feats, kind).sort()
        out.append(bank_probs[idx[:, :k], :].mean(1))
    return torch.cat(out)


@STRATEGIES.register("adacontrast")
class AdaContrast(Strategy):
    """MoCo-style instance discrimination + refined pseudo-label CE + diversity, all weights trained."""

    protocols = ("online",)

    Config = AdaContrastConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.contrast_type not in ("class_aware", "plain"):
            raise ConfigError(f"strategy.contrast_type must be class_aware or plain, got '{cfg.contrast_type}'.")
        if cfg.dist_type not in ("cosine", "euclidean"):
            raise ConfigError(f"strategy.dist_type must be cosine or euclidean, got '{cfg.dist_type}'.")
        if cfg.queue_size < 1 or cfg.num_neighbors < 1:
            raise ConfigError("strategy.queue_size and strategy.num_neighbors must be >= 1.")
        self.teacher = None          # key encoder
        self.queue = None            # dict: feats [D, K], labels [K], ptr
        self.bank = None             # dict: feats [N, D], probs [N, C], ptr
        self.seen = 0

    def configure_model(self):
        self.model.train()
        self.model.requires_grad_(True)
        self.teacher = frozen_copy(self.model)
        self.queue, self.bank, self.seen = self.new_memory(), self.new_bank(), 0

    def parameters_to_train(self):
        return [p for _, p in weight_and_bias(self.model)]

    def new_memory(self):
        """The MoCo queue, random as in MoCo (features ~ N(0, 1) normalized, uniform labels)."""
        feats = F.normalize(torch.randn(feature_dim(self.model), self.cfg.queue_size), dim=0)
        labels = torch.randint(0, self.num_classes, (self.cfg.queue_size,))
        return {"feats": feats.to(self.device), "labels": labels.to(self.device), "ptr": 0}

    def new_bank(self):
        return {"feats": torch.zeros(0, feature_dim(self.model), device=self.device),
                "probs": torch.zeros(0, self.num_classes, device=self.device), "ptr": 0}

    def views(self, x):
        """(weak, strong query, strong key) views of ``x``."""
        return moco_weak(x), moco_strong(x), moco_strong(x)

    @torch.no_grad()
    def pseudo_labels(self, feats_w, logits_w):
        if self.seen >= WARMUP_SAMPLES:
            probs = nearest_neighbor_probs(feats_w, self.bank["feats"], self.bank["probs"],
                                           self.cfg.dist_type, self.cfg.num_neighbors)
            return probs.max(dim=1)[1]
        self.seen += len(feats_w)
        return F.softmax(logits_w, dim=1).argmax(dim=1)

    @torch.no_grad()
    def enqueue(self, keys, labels):
        q, n = self.queue, self.cfg.queue_size
        idx = torch.arange(q["ptr"], q["ptr"] + len(keys), device=keys.device) % n
        q["feats"][:, idx] = keys.T
        q["labels"][idx] = labels
        q["ptr"] = (q["ptr"] + len(keys)) % n

    @torch.no_grad()
    def update_bank(self, feats, logits):
        b, probs = self.bank, F.softmax(logits, dim=1)
        start, end = b["ptr"], b["ptr"] + len(feats)
        if len(b["feats"]) < self.cfg.queue_size:
            b["feats"], b["probs"] = torch.cat([b["feats"], feats]), torch.cat([b["probs"], probs])
        else:
            idx = torch.arange(start, end, device=feats.device) % len(b["feats"])
            b["feats"][idx, :], b["probs"][idx, :] = feats, probs
        b["ptr"] = end % len(b["feats"])

    @torch.no_grad()
    def ema(self):
        m = self.cfg.momentum_teacher
        if m < 1.0:
            for t, s in zip(self.teacher.parameters(), self.model.parameters()):
                t.data = m * t.data + (1 - m) * s.data

    def adacontrast_loss(self, w, q, k):
        c = self.cfg
        feats_w, logits_w = features_and_logits(self.model, w)
        labels = self.pseudo_labels(feats_w.detach(), logits_w.detach())
        feats_q, logits_q = features_and_logits(self.model, q)
        query = F.normalize(feats_q, dim=1)
        with torch.no_grad():
            self.ema()
            key = F.normalize(features_and_logits(self.teacher, k)[0], dim=1)
        logits_ins = torch.cat([torch.einsum("nc,nc->n", [query, key]).unsqueeze(-1),
                                torch.einsum("nc,ck->nk", [query, self.queue["feats"].clone().detach()])], dim=1)
        logits_ins /= c.temperature
        self.enqueue(key, labels)
        if c.contrast_type == "class_aware":
            keep = torch.ones_like(logits_ins, dtype=torch.bool)
            keep[:, 1:] = labels.reshape(-1, 1) != self.queue["labels"]
            logits_ins = torch.where(keep, logits_ins, torch.tensor([float("-inf")], device=logits_ins.device))
        loss_ins = F.cross_entropy(logits_ins, torch.zeros(len(logits_ins), dtype=torch.long, device=q.device))
        loss_cls = F.cross_entropy(logits_q, labels)
        mean_probs = F.softmax(logits_q, dim=1).mean(dim=0)
        loss_div = -torch.sum(-mean_probs * torch.log(mean_probs + 1e-8)) if c.eta > 0 else 0.0
        return c.alpha * loss_cls + c.beta * loss_ins + c.eta * loss_div

    def forward_and_adapt(self, x):
        w, q, k = self.views(x)
        self.model.train()
        self.teacher.train()
        with torch.enable_grad():
            loss = self.adacontrast_loss(w, q, k)
        self.optimize(loss)
        with torch.no_grad():
            self.update_bank(*features_and_logits(self.teacher, w))
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x):
        self.model.eval()
        out = self.model(x).float()
        self.model.train()
        return out

    def extra_state(self):
        return {"teacher": self.teacher.state_dict(), "queue": dict(self.queue), "bank": dict(self.bank),
                "seen": self.seen}

    def load_extra_state(self, state):
        self.teacher.load_state_dict(state["teacher"])
        self.queue = {k: v.clone() if torch.is_tensor(v) else v for k, v in state["queue"].items()}
        self.bank = {k: v.clone() if torch.is_tensor(v) else v for k, v in state["bank"].items()}
        self.seen = int(state["seen"])
