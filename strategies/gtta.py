"""GTTA: gradual test-time adaptation by self-training with source replay mixed into the target.

R. A. Marsden, M. Döbler, B. Yang, "Gradual Test-Time Adaptation by Self-Training and Style
Transfer", 2022 (arXiv:2208.07736). Follows the authors' code (mariodoebler/test-time-adaptation
``classification/methods/gtta.py``), in its mixup variant.

Every weight and bias is trained, the model runs in train mode and BatchNorm uses the batch's
statistics. Per test batch x (``steps`` times; pseudo-labels on the first):
  1. pseudo-labels: y = argmax p(x) (no gradient); the moving average c <- 0.9 c + 0.1 mean max p
     (from 0.9); samples with max p < sqrt(c) get no label (ignored in the loss);
  2. a labelled source batch (x_s, y_s) cut to len(x); each source image is mixed with the test
     image whose prediction is most similar to its own (argmax_j p(x_s) . p(x_j)):
     x_mix = ``lambda_mixup`` x_j + (1 - ``lambda_mixup``) x_s; one step on CE(f(x_mix), y_s);
  3. one step on CE(f(x), y) over the labelled test samples.
The returned prediction is f(x) of step 3 (after the source step, before the target step).
Source batches come from a seeded stream over the source (``strategies.tta_base.SourceStream``),
which, like the authors' loader iterator, continues over resets; ``warm_up`` opens it.

The ImageNet-C configuration of the authors (``cfgs/imagenet_c/gtta.yaml``) replaces the mixup by
AdaIN style transfer of source images to the test style (a VGG encoder and a decoder pre-trained
for 20,000 steps on the source); that variant is not implemented here.

Defaults: ``cfgs/cifar10_c/gtta.yaml`` (Adam, lr 1e-5, batch 200; ImageNet-C: batch 64) and
``conf.py`` GTTA.LAMBDA_MIXUP 1/3, OPTIM.STEPS 1.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.mean_teacher import weight_and_bias
from strategies.tta_base import SourceStream, use_batch_statistics

SOURCE_SEED = 2025          # seed of the source stream's permutations
IGNORE = -1


@dataclass
class GTTAConfig(StrategyConfig):
    name: str = "gtta"
    optimizer: str = "adam"        # cfgs/cifar10_c/gtta.yaml OPTIM.METHOD Adam
    lr: float = 1e-5               # OPTIM.LR 1e-5
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64); also the source batch size
    eval_batch_size: int = 200
    lambda_mixup: float = 1 / 3    # conf.py GTTA.LAMBDA_MIXUP
    steps: int = 1                 # conf.py OPTIM.STEPS (pseudo-labels are refreshed every `steps`)


@STRATEGIES.register("gtta")
class GTTA(Strategy):
    """Self-training on filtered pseudo-labels + CE on source images mixed with similar test images."""

    protocols = ("online",)

    Config = GTTAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if not 0.0 <= cfg.lambda_mixup <= 1.0:
            raise ConfigError(f"strategy.lambda_mixup must be in [0, 1], got {cfg.lambda_mixup}.")
        if cfg.steps < 1:
            raise ConfigError(f"strategy.steps must be >= 1, got {cfg.steps}.")
        self.avg_conf = torch.tensor(0.9)
        self.source = None            # SourceStream

    def configure_model(self):
        self.model.train()
        self.model.requires_grad_(True)
        use_batch_statistics(self.model)

    def parameters_to_train(self):
        return [p for _, p in weight_and_bias(self.model)]

    def warm_up(self, source):
        """Open the labelled source stream that is replayed (mixed) with every test batch."""
        if source is None or len(source) == 0:
            raise ConfigError("gtta replays labelled source images with every test batch, but the scenario has no "
                              "source data. Use a scenario with source data (corruption_stream: "
                              "scenario.with_source=true).")
        self.source = SourceStream(source, self.cfg.batch_size, SOURCE_SEED)

    @torch.no_grad()
    def pseudo_labels(self, logits):
        """argmax labels; IGNORE where the confidence is below sqrt of its moving average."""
        conf, labels = torch.max(logits.softmax(dim=1), dim=1)
        self.avg_conf = 0.9 * self.avg_conf.to(conf.device) + (1 - 0.9) * conf.mean()
        labels = labels.clone()
        labels[torch.where(conf < torch.sqrt(self.avg_conf))] = IGNORE
        return labels

    def forward_and_adapt(self, x):
        lam = self.cfg.lambda_mixup
        self.model.train()
        for step in range(self.cfg.steps):
            with torch.no_grad(), self.autocast():
                logits = self.model(x).float()
                if step == 0:
                    labels = self.pseudo_labels(logits)
                src = self.source.next(self.device)
                x_src, y_src = src.x[:len(x)], src.y[:len(x)]
                sim = torch.matmul(self.model(x_src).float().softmax(1), logits.softmax(1).T)
                x_mix = lam * x[torch.max(sim, dim=1)[1]] + (1 - lam) * x_src
            with torch.enable_grad(), self.autocast():
                loss_src = F.cross_entropy(self.model(x_mix).float(), y_src)
            self.optimize(loss_src)
            with torch.enable_grad(), self.autocast():
                logits = self.model(x).float()
                loss_trg = F.cross_entropy(logits, labels, ignore_index=IGNORE)
            self.optimize(loss_trg)
        return logits.detach()

    def reset(self):
        avg_conf, pos = self.avg_conf, self.source.pos if self.source is not None else 0
        super().reset()                   # weights and optimizer; c and the source stream go on (authors)
        self.avg_conf = avg_conf
        if self.source is not None:
            self.source.pos = pos

    def extra_state(self):
        return {"avg_conf": self.avg_conf, "source_pos": self.source.pos if self.source is not None else 0}

    def load_extra_state(self, state):
        self.avg_conf = state["avg_conf"]
        if self.source is not None:
            self.source.pos = int(state["source_pos"])
