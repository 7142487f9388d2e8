"""DER++: Dark Experience Replay with logit matching plus labels.

Paper: Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020, arXiv 2004.07211.

    L = CE(f(x), y) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

(x', z') and (x'', y'') are two independent uniform draws from a reservoir buffer that stores
the non-augmented inputs, their labels and the logits z the network produced for them (on the
augmented batch, before the update) when they were inserted; stored logits are never refreshed.
MSE is the mean over batch x all logits. Buffer samples are augmented on retrieval (Mammoth).

Defaults: Mammoth ``utils/best_args.py`` for seq-cifar10 (identical at the paper release and in
2023): lr 0.03, batch 32, minibatch 32, plain SGD; buffer 200: alpha 0.1, beta 0.5;
buffer 500: alpha 0.2, beta 0.5 (the defaults below); buffer 5120: alpha 0.1, beta 1.0.

Only ``after_step`` is needed, so DER++ works with hidden task boundaries (the paper's
"general continual learning" setting).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from strategies.er import ER


@dataclass
class DERPPConfig(StrategyConfig):
    name: str = "derpp"
    lr: float = 0.03                # Mammoth best args, seq-cifar10 (all buffer sizes)
    batch_size: int = 32            # idem
    minibatch_size: int = 32        # idem: size of each of the two buffer draws
    buffer_size: int = 500
    alpha: float = 0.2              # logit MSE weight; seq-cifar10 buffer 500 (200: 0.1, 5120: 0.1)
    beta: float = 0.5               # replayed-label CE weight; seq-cifar10 buffer 200/500 (5120: 1.0)
    buffer_policy: str = "reservoir"  # reservoir (paper) | class_balanced
    store_uint8: bool = True        # store [0, 1] images as uint8 when lossless (4x less memory)


@STRATEGIES.register("derpp")
class DERPP(ER):
    """DER++: CE + alpha * MSE to stored logits + beta * CE on replayed labels.

    ER's buffer, raw-data handling, augmentation and buffer state are reused; the loss adds the
    two replay terms and ``after_step`` also stores the logits.
    """
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py

    Config = DERPPConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.alpha < 0 or self.cfg.beta < 0:
            raise ConfigError(f"derpp needs strategy.alpha >= 0 and strategy.beta >= 0, got "
                              f"{self.cfg.alpha} and {self.cfg.beta}.")
        self._logits = None           # outputs on the current batch, stored by after_step

    def loss(self, batch):
        out = self.model(self.augment(batch.x))
        loss = F.cross_entropy(out, batch.y)
        self._logits = out.detach()
        if len(self.buffer):
            if self.cfg.alpha:        # two independent draws, in this order (alpha term first)
                bx, _, bz = self.replay_batch()
                loss = loss + self.cfg.alpha * F.mse_loss(self.model(bx).float(), bz)
            if self.cfg.beta:
                bx, by, _ = self.replay_batch()
                loss = loss + self.cfg.beta * F.cross_entropy(self.model(bx), by)
        return loss

    def after_step(self, batch):
        self.buffer.add(batch.x, batch.y, logits=self._logits)
        self._logits = None
