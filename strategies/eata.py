"""EATA: efficient anti-forgetting test-time adaptation (and ETA, its variant without Fisher).

S. Niu, J. Wu, Y. Zhang, Y. Chen, S. Zheng, P. Zhao, M. Tan, "Efficient Test-Time Model
Adaptation without Forgetting", ICML 2022 (arXiv:2204.02610). Follows the RMT authors' benchmark
(mariodoebler/test-time-adaptation ``classification/methods/eata.py``, built on mr-eggplant/EATA).

Per test batch, with the normalization layers' affine parameters trained and BatchNorm using the
batch's statistics (``configure_norm_adaptation``):
  1. reliable samples: entropy H(x) < E0 = ``margin_e0`` * ln K (Eq. 3);
  2. non-redundant samples: |cos(p(x), m)| < ``d_margin``, m the moving average (0.9) of the mean
     prediction of the samples kept in earlier batches (Eq. 4-5; no filter on the first batch);
  3. loss = mean over the kept samples of H(x) / exp(H(x) - E0) (Eq. 6-7, weight not
     differentiated) + ``fisher_alpha`` * sum_i F_i (theta_i - theta_i^0)^2 (Eq. 8-9);
  4. one step, only if a sample was kept. The prediction is the one made before the step.

Fisher information (``warm_up``): on ``fisher_samples`` source images (a seeded random subset),
batches of ``batch_size``, the squared gradient of the cross-entropy against the model's own
predicted label, averaged over the batches, for every trained parameter, with theta^0 the
source values. As the authors, the labels of the source data are not used. ``fisher_alpha=0``
is ETA and needs no source data.

Defaults: ``cfgs/cifar10_c/eata.yaml`` (Adam, lr 1e-3, batch 200, FISHER_ALPHA 1.0, D_MARGIN 0.4,
SOURCE.NUM_SAMPLES 2000) and ``conf.py`` (EATA.MARGIN_E0 0.4). CIFAR-100-C (``cifar100_c/eata.yaml``):
d_margin=0.1. ImageNet-C (``imagenet_c/eata.yaml``): optimizer=sgd lr=0.00025 momentum=0.9
nesterov=true batch_size=64 fisher_alpha=2000 d_margin=0.05. ETA: ``cfgs/*/eta.yaml`` = fisher_alpha=0.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import configure_norm_adaptation, softmax_entropy, source_subset

FISHER_SEED = 2022        # seed of the random source subset for the Fisher information


@dataclass
class EATAConfig(StrategyConfig):
    name: str = "eata"
    optimizer: str = "adam"        # cfgs/cifar10_c/eata.yaml OPTIM.METHOD Adam
    lr: float = 1e-3               # OPTIM.LR 1e-3 (ImageNet-C: SGD 0.00025)
    momentum: float = 0.9          # conf.py OPTIM.MOMENTUM (SGD only)
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C: 64); also the Fisher batch size
    eval_batch_size: int = 200
    margin_e0: float = 0.4         # conf.py EATA.MARGIN_E0, times ln(num_classes)
    d_margin: float = 0.4          # EATA.D_MARGIN 0.4 (CIFAR-100-C 0.1, ImageNet-C 0.05)
    fisher_alpha: float = 1.0      # EATA.FISHER_ALPHA 1.0 (ImageNet-C 2000; 0: ETA)
    fisher_samples: int = 2000     # SOURCE.NUM_SAMPLES 2000 (-1: all source samples)


def update_model_probs(current, new_probs):
    """The moving average m of the mean prediction (momentum 0.9); unchanged when nothing is new."""
    if len(new_probs) == 0:
        return current
    with torch.no_grad():
        return new_probs.mean(0) if current is None else 0.9 * current + (1 - 0.9) * new_probs.mean(0)


@STRATEGIES.register("eata")
class EATA(Strategy):
    """Entropy minimization on reliable, non-redundant samples + Fisher-weighted anchor to the source."""

    protocols = ("online",)

    Config = EATAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.fisher_alpha < 0 or cfg.d_margin < 0 or cfg.margin_e0 <= 0:
            raise ConfigError("strategy.fisher_alpha and d_margin must be >= 0 and margin_e0 > 0.")
        self.e_margin = cfg.margin_e0 * math.log(self.num_classes)
        self.model_probs = None         # m of Eq. 4
        self.fishers = None             # [(F_i, theta_i^0)] per trained parameter, or None (ETA)
        self.kept = [0, 0]              # samples kept after filter 1 and after filter 2, in total

    def configure_model(self):
        configure_norm_adaptation(self.model, "eata")

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def warm_up(self, source):
        """Fisher information of the trained parameters on source images (their own predicted labels)."""
        if not (self.cfg.fisher_alpha > 0 and self.cfg.fisher_samples != 0):
            return                                   # ETA: no Fisher regularizer, no source data needed
        if source is None or len(source) == 0:
            raise ConfigError("eata computes its Fisher regularizer on source images, but the scenario has no "
                              "source data. Use a scenario with source data (corruption_stream: "
                              "scenario.with_source=true), or run ETA: strategy.fisher_alpha=0.")
        data = source_subset(source, self.cfg.fisher_samples, FISHER_SEED)
        params = self.parameters_to_train()
        sums, n = [torch.zeros_like(p) for p in params], 0
        for batch in data.batches(self.cfg.batch_size, device=self.device):
            with torch.enable_grad():
                out = self.model(batch.x)
                loss = F.cross_entropy(out, out.max(1)[1])
                grads = torch.autograd.grad(loss, params)
            for s, g in zip(sums, grads):
                s.add_(g.detach() ** 2)
            n += 1
        self.fishers = [(s / n, p.detach().clone()) for s, p in zip(sums, params)]

    def eata_loss(self, logits):
        """EATA loss of a batch's logits; returns (loss, number of samples kept after both filters)."""
        ent = softmax_entropy(logits)
        keep1 = torch.where(ent < self.e_margin)
        ent = ent[keep1]
        probs = logits[keep1].softmax(1)
        if self.model_probs is not None:
            cos = F.cosine_similarity(self.model_probs.unsqueeze(0), probs, dim=1)
            keep2 = torch.where(torch.abs(cos) < self.cfg.d_margin)
            ent, probs = ent[keep2], probs[keep2]
        self.model_probs = update_model_probs(self.model_probs, probs)
        loss = ent.mul(1 / torch.exp(ent.detach() - self.e_margin)).mean(0)
        if self.fishers is not None:
            ewc = 0
            for p, (fisher, p0) in zip(self.parameters_to_train(), self.fishers):
                ewc += self.cfg.fisher_alpha * (fisher * (p - p0) ** 2).sum()
            loss = loss + ewc
        self.kept[0] += len(keep1[0])
        self.kept[1] += len(ent)
        return loss, len(ent)

    def forward_and_adapt(self, x):
        with torch.enable_grad(), self.autocast():
            logits = self.model(x)
            loss, kept = self.eata_loss(logits.float())
        if kept > 0:
            self.optimize(loss)
        return logits.detach().float()

    def reset(self):
        kept = list(self.kept)             # the counters go on over resets
        super().reset()                    # restores the weights, the optimizer and m = None
        self.kept = kept

    def extra_state(self):
        return {"model_probs": self.model_probs, "kept": list(self.kept)}

    def load_extra_state(self, state):
        self.model_probs = state["model_probs"]
        self.kept = list(state["kept"])

    def results(self):
        return {"samples_kept_reliable": self.kept[0], "samples_kept_reliable_nonredundant": self.kept[1]}
